"""BSP (Chen et al., "Transferability vs. Discriminability: Batch Spectral
Penalization for Adversarial Domain Adaptation", ICML 2019).

A penalty on the top-`k` singular values of the source and target feature
matrices. TLlib adds it to DANN (`configs/bsp.py` is `dann+bsp`, trade-off
2e-4) after pre-training the classifier on the source
(`config.method.pretrain_steps`).
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import terms


@terms.register_term("bsp")
class BSP(terms.Term):
  """Batch spectral penalization of the `k` leading singular values."""

  k: int

  def __call__(self, outputs, *, step, train=True):
    penalty = losses.bsp(outputs.source_features, outputs.target_features, k=self.k)
    return penalty, {"bsp": penalty}
