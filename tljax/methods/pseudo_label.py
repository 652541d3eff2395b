"""Pseudo-label self-training (Lee, "Pseudo-Label: The Simple and Efficient
Semi-Supervised Learning Method for Deep Neural Networks", ICML workshops
2013) on the target domain.

The classifier's own confident target predictions (softmax above
`threshold`), detached, become labels for a cross-entropy on the same
predictions: TLlib's `ConfidenceBasedSelfTrainingLoss(y, y)`. A term: alone
(`pseudo_label`) or with others (`dann+pseudo_label`).
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("pseudo_label")
class PseudoLabel(terms.Term):
  """Cross-entropy of the target predictions with their confident arg-max."""

  threshold: float

  def __call__(self, outputs, *, step, train=True):
    value, mask, _ = losses.confidence_self_training_loss(
        outputs.target_logits, outputs.target_logits, threshold=self.threshold)
    return value, {"self_training_loss": value, "pseudo_label_ratio": mask.mean()}
