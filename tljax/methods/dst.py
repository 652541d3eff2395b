"""DST (Chen et al., "Debiased Self-Training for Semi-Supervised Learning",
NeurIPS 2022), as TLlib's semi-supervised `dst.py`.

Two heads beside the classifier's, on its features (TLlib's `ImageClassifier`
of `tllib/self_training/dst.py`, each `Linear(width) -> ReLU -> Dropout(0.5)
-> Linear`: `method/pseudo_head/...` and `method/adv_head/...`):

- the pseudo head learns from the pseudo-labels: the main head's confident
  weak-view predictions (above `threshold`) label a cross-entropy of the
  pseudo head on the strong view (`trade_off`), so the main head, which never
  trains on its own pseudo-labels, is not biased by them;
- the worst-case head, behind gradient reversal (TLlib's warm start up to
  `grl_hi` over `grl_max_steps`), fits the main head's predictions on
  labelled data and contradicts them on unlabelled data
  (`losses.worst_case_estimation`, `eta'`); the reversed gradient makes the
  features resist it (`eta`).

Only the main head is evaluated. Passes in TLlib's order: the labelled
strong view (`trade_off_cls_strong` x cross-entropy), one pass over
`[labelled weak; unlabelled weak]` (the labelled cross-entropy and the
worst-case loss), the unlabelled strong view (the pseudo head).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register
from tljax.models.heads import TwoLayerHead

HEADS = ("pseudo_head", "adv_head")


@register("dst")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DST(base.Method):
  """Self-training through a separate pseudo head, with worst-case estimation.

  Attributes:
    threshold: confidence of the main head's weak-view prediction above
      which it labels the pseudo head's strong view.
    trade_off: weight of the self-training loss.
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
    eta: weight of the worst-case estimation loss.
    eta_prime: its weight of the labelled part.
    width: hidden width of the two heads.
    grl_alpha, grl_lo, grl_hi, grl_max_steps: the reversal's warm start.
  """

  source_views = ("image_strong",)
  target_views = ("image_strong",)

  num_classes: int
  threshold: float
  trade_off: float
  trade_off_cls_strong: float
  eta: float
  eta_prime: float
  width: int
  grl_alpha: float
  grl_lo: float
  grl_hi: float
  grl_max_steps: int

  def __post_init__(self):
    if not 0 <= self.threshold < 1:
      raise ValueError(f"config.method.threshold={self.threshold} must be in [0, 1)")
    if self.width < 1:
      raise ValueError(f"config.method.width={self.width} must be >= 1")

  def networks(self, num_classes, classifier):
    dtype = classifier.dtype
    return {name: TwoLayerHead(num_classes, self.width, 0.5, dtype=dtype) for name in HEADS}

  def init_networks(self, ctx, rng, variables, outputs):
    return {name: dict(ctx.networks[name].init({"params": key}, outputs.source_features))
            for name, key in zip(HEADS, jax.random.split(rng))}

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    strong_rng, joint_rng, adv_rng, unlabelled_rng, pseudo_rng = jax.random.split(rng, 5)
    (_, labelled_strong), variables = ctx.apply_classifier(variables, source["image_strong"],
                                                           train=True, rng=strong_rng)
    cls_loss_strong = self.trade_off_cls_strong * base.cross_entropy(labelled_strong,
                                                                     source["label"])
    n = source["image"].shape[0]
    (features, logits), variables = ctx.apply_classifier(
        variables, jnp.concatenate([source["image"], target["image"]]), train=True,
        rng=joint_rng)
    cls_loss_weak = base.cross_entropy(logits[:n], source["label"])
    coeff = losses.warm_start_coeff(step, alpha=self.grl_alpha, lo=self.grl_lo, hi=self.grl_hi,
                                    max_steps=self.grl_max_steps)
    adv_logits, variables = ctx.apply_network("adv_head", variables,
                                              losses.gradient_reversal(features, coeff),
                                              train=True, rng=adv_rng)
    worst_case = self.eta * losses.worst_case_estimation(
        logits[:n], adv_logits[:n], logits[n:], adv_logits[n:], eta_prime=self.eta_prime)
    (strong_features, _), variables = ctx.apply_classifier(variables, target["image_strong"],
                                                           train=True, rng=unlabelled_rng)
    pseudo_logits, variables = ctx.apply_network("pseudo_head", variables, strong_features,
                                                 train=True, rng=pseudo_rng)
    self_training, mask, _ = losses.confidence_self_training_loss(
        pseudo_logits, logits[n:], threshold=self.threshold)
    self_training = self.trade_off * self_training
    cls_loss = cls_loss_strong + cls_loss_weak
    return cls_loss + self_training + worst_case, (variables, {
        "cls_loss": cls_loss, "transfer_loss": self_training + worst_case,
        "self_training_loss": self_training, "worst_case_loss": worst_case,
        "pseudo_label_ratio": mask.mean(), "grl_coeff": coeff,
        "source_train_accuracy": base.accuracy(logits[:n], source["label"])})
