"""RSD (Chen et al., "Representation Subspace Distance for Domain Adaptation
Regression", ICML 2021; TLlib's `examples/domain_adaptation/image_regression/rsd.py`).

The features minimise the distance between the subspaces the source and the
target batch span, plus `bmp_trade_off` times the base mismatch penalty
(`losses.rsd`). TLlib runs the regressor once per domain
(`forward='per_domain'`) on a bottleneck `Linear(256) -> ReLU` without
BatchNorm, and weights the term by 0.001.
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("rsd")
class RSD(terms.Term):
  """Representation subspace distance with the base mismatch penalty.

  Attributes:
    bmp_trade_off: the weight of the base mismatch penalty inside the term
      (TLlib's `--trade-off-bmp`, 0.1).
  """

  bmp_trade_off: float
  # Defined for regressors (the paper's setting); the term reads only features.
  label_kinds = ("regression",)

  def __call__(self, outputs, *, step, train=True):
    distance, mismatch = losses.subspace_distance(outputs.source_features,
                                                  outputs.target_features)
    value = distance + self.bmp_trade_off * mismatch
    return value, {"rsd": distance, "bmp": mismatch}
