"""Pi-model (Laine & Aila, "Temporal Ensembling for Semi-Supervised
Learning", ICLR 2017), as TLlib's semi-supervised `pi_model.py`.

Each unlabelled image arrives in two weak views drawn independently (`image`
and `image_second`, `config.data.second_preprocess`: the training
augmentation again). The squared L2 distance between the classifier's softmax
outputs on the two (TLlib's `L2ConsistencyLoss`, mean over the batch; both
views get a gradient) joins the labelled loss with weight `trade_off` times
TLlib's sigmoid warm-up (`losses.sigmoid_warm_up` over `warm_up_steps`,
advanced every `warm_up_interval` steps: TLlib's 10 of 40 epochs of 500
iterations).

The labelled loss is TLlib's (`terms.labelled_loss`): cross-entropy on the
weak view plus `trade_off_cls_strong` times that on a strong view. Four
training passes in TLlib's order: labelled weak, labelled strong, each
unlabelled view.
"""

from __future__ import annotations

import dataclasses

import jax

from tljax import losses
from tljax.methods import base, register, terms


@register("pi_model")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PiModel(base.Method):
  """Consistency of the predictions on two weak views of each unlabelled image.

  Attributes:
    trade_off: weight of the consistency loss (after warm-up).
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
    warm_up_steps: steps of the sigmoid warm-up (0: none).
    warm_up_interval: steps between changes of the warm-up weight (TLlib: an
      epoch; 0 or 1: every step).
  """

  target_views = ("image_second",)

  trade_off: float
  trade_off_cls_strong: float
  warm_up_steps: int
  warm_up_interval: int

  def __post_init__(self):
    if self.warm_up_steps < 0 or self.warm_up_interval < 0:
      raise ValueError(f"config.method.warm_up_steps={self.warm_up_steps} and "
                       f"warm_up_interval={self.warm_up_interval} must be >= 0")

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    labelled_rng, first_rng, second_rng = jax.random.split(rng, 3)
    cls_loss, logits, variables = terms.labelled_loss(
        ctx, variables, source, labelled_rng, trade_off_strong=self.trade_off_cls_strong)
    (_, first), variables = ctx.apply_classifier(variables, target["image"], train=True,
                                                 rng=first_rng)
    (_, second), variables = ctx.apply_classifier(variables, target["image_second"], train=True,
                                                  rng=second_rng)
    consistency = losses.l2_consistency_loss(jax.nn.softmax(first), jax.nn.softmax(second))
    weight = losses.sigmoid_warm_up(step, self.warm_up_steps, self.warm_up_interval)
    transfer = self.trade_off * weight * consistency
    return cls_loss + transfer, (variables, {
        "cls_loss": cls_loss, "transfer_loss": transfer, "consistency_loss": consistency,
        "warm_up_weight": weight, **ctx.supervised_metrics(logits, source["label"])})
