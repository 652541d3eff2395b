"""AFN (Xu et al., "Larger Norm More Transferable: An Adaptive Feature Norm
Approach for Unsupervised Domain Adaptation", ICCV 2019).

Stepwise adaptive feature norm on source and target features; one classifier
pass per domain, as TLlib's AFN example. TLlib's Office-31 recipe adds the
target entropy: `afn+entropy_min` (see `configs/afn.py`).
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("afn")
class AFN(terms.Term):
  """`afn(f_s) + afn(f_t)`: feature norms pushed up by `delta` per step (a
  fixed `radius` gives hard AFN)."""

  delta: float
  radius: float | None

  def __call__(self, outputs, *, step, train=True):
    norm = (losses.adaptive_feature_norm(outputs.source_features, delta=self.delta,
                                         radius=self.radius)
            + losses.adaptive_feature_norm(outputs.target_features, delta=self.delta,
                                           radius=self.radius))
    return norm, {"feature_norm_loss": norm}
