"""MCC (Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020).

A target-only regulariser on the classifier's logits; alone or added to
another method (`cdan+mcc`).
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("mcc")
class MCC(terms.Term):
  """Minimum class confusion on the target logits at `temperature`."""

  temperature: float

  def __call__(self, outputs, *, step, train=True):
    value = losses.mcc(outputs.target_logits, temperature=self.temperature)
    return value, {"mcc": value}
