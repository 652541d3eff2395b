"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain
Adaptation", ECCV 2016 workshops)."""

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
