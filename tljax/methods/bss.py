"""BSS (Chen et al., "Catastrophic Forgetting Meets Negative Transfer: Batch
Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019).

    loss = CE + eta sum_{i<=k} sigma_{-i}^2(F)

over the batch's feature matrix `F` (the classifier's features: the bottleneck
output, or the pooled backbone output without one), shrinking the directions
the small target set cannot estimate. TLlib's `bss.py`: `k = 1`, `eta = 0.001`.
A fine-tuning method: it reads only the labelled task data (`source`).
"""

from __future__ import annotations

import dataclasses

from tljax import losses
from tljax.methods import base, register


@register("bss")
@dataclasses.dataclass(frozen=True, kw_only=True)
class BSS(base.Method):
  """Cross-entropy plus batch spectral shrinkage of the features.

  Attributes:
    trade_off: eta (TLlib 0.001).
    k: how many of the smallest singular values are penalised (TLlib 1).
  """

  inputs = ("source",)

  trade_off: float
  k: int

  def loss(self, ctx, variables, batch, step, rng):
    source = batch["source"]
    (features, logits), variables = ctx.apply_classifier(variables, source["image"], train=True,
                                                         rng=rng)
    cls_loss = base.cross_entropy(logits, source["label"])
    shrinkage = losses.batch_spectral_shrinkage(features, k=self.k)
    return cls_loss + self.trade_off * shrinkage, (variables, {
        "cls_loss": cls_loss, "bss": shrinkage, "transfer_loss": self.trade_off * shrinkage,
        "source_train_accuracy": base.accuracy(logits, source["label"])})
