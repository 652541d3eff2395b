"""DDC (Tzeng et al., "Deep Domain Confusion", 2014): MMD with one Gaussian kernel.

The bandwidth is `alpha` times the batch's mean squared distance, or a fixed
`sigma`; TLlib's estimator (see `tljax.losses.mmd`). This is neither the
paper's penalty (a linear kernel: the squared distance of the mean
representations) nor DeepDA's DDC, which is its DAN (`MMDLoss`: five Gaussian
kernels, bandwidths 2^-2..2^2 times the mean off-diagonal squared distance,
in the biased estimate). `tests/test_trajectory.py` holds it to TLlib's
`MultipleKernelMaximumMeanDiscrepancy` with one `GaussianKernel`.
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
