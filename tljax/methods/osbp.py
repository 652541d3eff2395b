"""OSBP (Saito et al., "Open Set Domain Adaptation by Backpropagation", ECCV 2018).

Open-set domain adaptation: the target also holds classes the source never
saw. The classifier has `K + 1` outputs (`LabelSpace.num_outputs`), the last
one "unknown", which no source example carries. On target examples the head
is trained to give "unknown" probability `t = 0.5`, and the feature
extractor, through a gradient reversal layer between the features and the
head, to move each example away from that boundary, towards a known class
or towards unknown (`tljax.losses.unknown_class_bce`):

    loss = CE(source, K + 1 outputs) + trade_off * BCE(p_unknown(target), t)

TLlib's example (`examples/domain_adaptation/openset_domain_adaptation/osbp.py`,
`tllib/alignment/osbp.py`): one pass per domain (the source's without
reversal, the target's with a plain reversal of coefficient 1 before the
head), trade-off 1, `t = 0.5`, and its own bottleneck of two blocks
`Linear -> BatchNorm -> ReLU -> Dropout(0.5)` (`config.model.bottleneck_layers=2`).
At evaluation a target example's label is the arg-max over all `K + 1`
outputs (`predict_labels`), not the threshold rule of the other methods.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register

# TLlib's `GradientReverseLayer` between OSBP's features and head: coefficient 1.
HEAD_GRADIENT_SCALE = -1.0


@register("osbp")
@dataclasses.dataclass(frozen=True, kw_only=True)
class OSBP(base.Method):
  """The source cross-entropy and the adversarial unknown boundary on the target.

  Attributes:
    trade_off: weight of the boundary loss (TLlib: 1).
    unknown_boundary: `t`, the unknown probability the head aims at on
      target examples (0.5).
  """

  settings = ("open_set",)

  trade_off: float
  unknown_boundary: float

  def __post_init__(self):
    if not 0 < self.unknown_boundary < 1:
      raise ValueError(f"config.method.unknown_boundary={self.unknown_boundary} must be in (0, 1)")

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    source_rng, target_rng = jax.random.split(rng)
    (_, source_logits), variables = ctx.apply_classifier(variables, source["image"], train=True,
                                                         rng=source_rng)
    (_, target_logits), variables = ctx.apply_classifier(
        variables, target["image"], train=True, rng=target_rng,
        head_gradient_scale=HEAD_GRADIENT_SCALE)
    cls_loss = ctx.supervised_loss(source_logits, source["label"])
    transfer = losses.unknown_class_bce(target_logits, t=self.unknown_boundary)
    unknown = jax.nn.softmax(target_logits.astype(jnp.float32))[:, -1]
    metrics = {"cls_loss": cls_loss, "transfer_loss": transfer,
               "target_unknown_probability": jnp.mean(unknown),
               **ctx.supervised_metrics(source_logits, source["label"])}
    return cls_loss + self.trade_off * transfer, (variables, metrics)

  def predict_labels(self, ctx, variables, features, logits, threshold):
    """TLlib's OSBP evaluation: the arg-max over the known classes and unknown
    (`threshold` is not read)."""
    del ctx, variables, features, threshold
    return jnp.argmax(logits, axis=-1)
