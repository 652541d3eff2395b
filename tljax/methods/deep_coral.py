"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain
Adaptation", ECCV 2016 workshops).

The default (`configs/deep_coral.py`: `form='tllib'`) is TLlib's
`CorrelationAlignmentLoss`, which `tests/test_trajectory.py` holds it to; the
paper's `||C_s - C_t||_F^2 / (4 d^2)` is `form='paper'`.
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("deep_coral")
class DeepCORAL(terms.Term):
  """CORAL on `layer`: TLlib's form (mean + covariance differences, averaged) or
  the paper's `||C_s - C_t||_F^2 / (4 d^2)` (`form='paper'`)."""

  form: str
  layer: str

  def __call__(self, outputs, *, step, train=True):
    source, target = terms.layer(outputs, self.layer)
    value = losses.coral(source, target, form=self.form)
    return value, {"coral": value}
