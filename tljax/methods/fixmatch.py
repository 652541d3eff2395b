"""FixMatch for domain adaptation (Sohn et al., "FixMatch: Simplifying
Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020), as
TLlib's `fixmatch.py`.

The input pipeline hands over two views of each target image: the training
augmentation (`image`, weak) and a strong one (`image_strong`,
`config.data.strong_preprocess`: `digits_strong` or `imagenet_strong`, see
`tljax/data/preprocess.py`). The classifier's detached prediction on the weak
view, where its confidence exceeds `threshold`, is the label of a
cross-entropy on the strong view (`trade_off` x TLlib's
`ConfidenceBasedSelfTrainingLoss`), added to the source cross-entropy.

As TLlib's, three passes in training mode, each normalised by its own batch
and each moving the BatchNorm running statistics: the weak target view
(no gradient), the source batch, the strong target view.

TLlib's semi-supervised `fixmatch.py` (the configs' `ssl_*` tasks) is the
same loss with a strong view of the labelled batch too:
`trade_off_cls_strong` x its cross-entropy, in a last pass.
(TLlib passes the labelled views first, then the unlabelled ones; only the
BatchNorm running statistics see the order.)
"""

from __future__ import annotations

import dataclasses

import jax

from tljax import losses
from tljax.methods import base, register


@register("fixmatch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FixMatch(base.Method):
  """Confident weak-view predictions as labels for the strong view.

  Attributes:
    threshold: confidence above which a weak-view prediction is a label.
    trade_off: weight of the self-training loss.
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
  """

  target_views = ("image_strong",)

  threshold: float
  trade_off: float
  trade_off_cls_strong: float = 0.0

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    weak_rng, source_rng, strong_rng = jax.random.split(rng, 3)
    (_, weak_logits), variables = ctx.apply_classifier(variables, target["image"], train=True,
                                                       rng=weak_rng)
    weak_logits = jax.lax.stop_gradient(weak_logits)
    (_, source_logits), variables = ctx.apply_classifier(variables, source["image"], train=True,
                                                         rng=source_rng)
    (_, strong_logits), variables = ctx.apply_classifier(variables, target["image_strong"],
                                                         train=True, rng=strong_rng)
    cls_loss = base.cross_entropy(source_logits, source["label"])
    if self.trade_off_cls_strong:
      (_, labelled_strong), variables = ctx.apply_classifier(
          variables, source["image_strong"], train=True, rng=jax.random.fold_in(source_rng, 1))
      cls_loss = cls_loss + self.trade_off_cls_strong * base.cross_entropy(labelled_strong,
                                                                           source["label"])
    self_training, mask, _ = losses.confidence_self_training_loss(
        strong_logits, weak_logits, threshold=self.threshold)
    transfer = self.trade_off * self_training
    return cls_loss + transfer, (variables, {
        "cls_loss": cls_loss, "transfer_loss": transfer, "pseudo_label_ratio": mask.mean(),
        "source_train_accuracy": base.accuracy(source_logits, source["label"])})
