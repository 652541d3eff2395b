"""BNM (Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm
Maximization under Label Insufficient Situations", CVPR 2020).

A target-only term on the classifier's predictions: minus the nuclear norm of
the batch's softmax matrix (`tljax.losses.bnm`), alone (`bnm`) or on top of
another method (`cdan+bnm`, `configs/combine.py`).

The default normalisation ('singular_values', the mean singular value) is the
authors' code's and DeepDA's `BNM`; the paper's Eq. 9 divides the nuclear norm
by the batch size ('batch'). `tests/test_trajectory.py` holds the method to
DeepDA's loss and training loop.
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("bnm")
class BNM(terms.Term):
  """`-||softmax(target logits)||_* / N` (`normalisation`: see `tljax.losses.bnm`)."""

  normalisation: str

  def __call__(self, outputs, *, step, train=True):
    value = losses.bnm(outputs.target_logits, normalisation=self.normalisation)
    return value, {"bnm": value}
