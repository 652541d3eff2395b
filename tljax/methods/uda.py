"""UDA (Xie et al., "Unsupervised Data Augmentation for Consistency
Training", NeurIPS 2020), as TLlib's semi-supervised `uda.py`.

Each unlabelled image arrives in a weak view (`image`) and a strong one
(`image_strong`, `config.data.strong_preprocess`). The classifier's
prediction on the weak view (no gradient) is the target of a KL divergence
from its prediction on the strong view, over the examples whose weak-view
confidence exceeds `threshold`, with the temperature `temperature` sharpening
(`losses.strong_weak_consistency`: TLlib divides the strong logits by it;
`sharpen_target=True` sharpens the weak targets as the paper does).

Optional, from the paper (TLlib has neither): training signal annealing
(`tsa`: 'linear', 'log' or 'exp'; '' off) drops from the labelled weak-view
cross-entropy the examples whose correct-class probability exceeds the
schedule's threshold, rising from 1/C to 1 over `tsa_steps`.

The labelled loss is TLlib's (`terms.labelled_loss`). Four training passes
in TLlib's order: labelled weak, labelled strong, unlabelled weak (no
gradient), unlabelled strong.
"""

from __future__ import annotations

import dataclasses

import jax

from tljax import losses
from tljax.methods import base, register, terms


@register("uda")
@dataclasses.dataclass(frozen=True, kw_only=True)
class UDA(base.Method):
  """Confidence-masked consistency of strong-view predictions with weak-view ones.

  Attributes:
    threshold: weak-view confidence above which an example counts.
    temperature: the sharpening temperature.
    trade_off: weight of the consistency loss.
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
    sharpen_target: the paper's sharpening (of the targets) instead of TLlib's.
    tsa: training signal annealing schedule ('' for none).
    tsa_steps: steps over which its threshold rises to 1 (the run's length).
  """

  target_views = ("image_strong",)

  threshold: float
  temperature: float
  trade_off: float
  trade_off_cls_strong: float
  sharpen_target: bool = False
  tsa: str = ""
  tsa_steps: int = 0

  def __post_init__(self):
    if not 0 <= self.threshold < 1:
      raise ValueError(f"config.method.threshold={self.threshold} must be in [0, 1)")
    if self.temperature <= 0:
      raise ValueError(f"config.method.temperature={self.temperature} must be > 0")
    if self.tsa and (self.tsa not in losses.semi_supervised.TSA_SCHEDULES
                     or self.tsa_steps < 1):
      raise ValueError(f"config.method.tsa={self.tsa!r} needs a schedule of "
                       f"{losses.semi_supervised.TSA_SCHEDULES} and tsa_steps >= 1 "
                       f"(got {self.tsa_steps}); '' turns it off")

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    labelled_rng, weak_rng, strong_rng = jax.random.split(rng, 3)
    metrics = {}
    if self.tsa:
      labelled_weak, labelled_strong = jax.random.split(labelled_rng)
      (_, logits), variables = ctx.apply_classifier(variables, source["image"], train=True,
                                                    rng=labelled_weak)
      eta = losses.tsa_threshold(step, self.tsa_steps, ctx.num_classes, self.tsa)
      cls_loss, kept = losses.tsa_cross_entropy(logits, source["label"], eta)
      metrics.update(tsa_threshold=eta, tsa_kept_ratio=kept.mean())
      if self.trade_off_cls_strong:
        (_, strong_logits), variables = ctx.apply_classifier(
            variables, source["image_strong"], train=True, rng=labelled_strong)
        cls_loss = cls_loss + self.trade_off_cls_strong * base.cross_entropy(
            strong_logits, source["label"])
    else:
      cls_loss, logits, variables = terms.labelled_loss(
          ctx, variables, source, labelled_rng, trade_off_strong=self.trade_off_cls_strong)
    (_, weak_logits), variables = ctx.apply_classifier(variables, target["image"], train=True,
                                                       rng=weak_rng)
    (_, strong_logits), variables = ctx.apply_classifier(variables, target["image_strong"],
                                                         train=True, rng=strong_rng)
    consistency, mask = losses.strong_weak_consistency(
        strong_logits, weak_logits, threshold=self.threshold, temperature=self.temperature,
        sharpen_target=self.sharpen_target)
    transfer = self.trade_off * consistency
    return cls_loss + transfer, (variables, {
        **metrics, "cls_loss": cls_loss, "transfer_loss": transfer,
        "confident_ratio": mask.mean(), **ctx.supervised_metrics(logits, source["label"])})
