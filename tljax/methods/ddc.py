"""DDC (Tzeng et al., "Deep Domain Confusion", 2014): MMD with one Gaussian kernel.

The bandwidth is `alpha` times the batch's mean squared distance, or a fixed
`sigma`; TLlib's estimator (see `tljax.losses.mmd`).
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("ddc")
class DDC(terms.Term):
  """Single-kernel MMD on `layer` ('features', 'logits' or 'probs')."""

  alpha: float
  sigma: float | None
  linear: bool
  layer: str

  def __call__(self, outputs, *, step, train=True):
    source, target = terms.layer(outputs, self.layer)
    value = losses.mmd(source, target, alpha=self.alpha, sigma=self.sigma, linear=self.linear)
    return value, {"mmd": value}
