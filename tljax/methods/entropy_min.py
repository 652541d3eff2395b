"""Entropy minimisation (Grandvalet & Bengio, "Semi-supervised Learning by
Entropy Minimization", NIPS 2004) on the target predictions."""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("entropy_min")
class EntropyMinimization(terms.Term):
  """Mean prediction entropy on the target batch."""

  def __call__(self, outputs, *, step, train=True):
    value = losses.entropy_loss(outputs.target_logits)
    return value, {"target_entropy": value}
