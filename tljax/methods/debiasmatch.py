"""DebiasMatch (Wang et al., "Debiased Learning from Naturally Imbalanced
Pseudo-Labels", CVPR 2022), as TLlib's semi-supervised `debiasmatch.py`.

FixMatch whose pseudo-labels are debiased by the classifier's running mean
prediction on unlabelled data: each step,

    q_hat <- momentum q_hat + (1 - momentum) mean_i softmax(f(u_i weak))

(from uniform; `method_state['q_hat']`), and the confidence-thresholded
cross-entropy is taken between `f(u strong) + tau log q_hat` (trained) and
the labels of `f(u weak) - tau log q_hat` (TLlib's
`ConfidenceBasedSelfTrainingLoss` on the adjusted logits).

TLlib's script re-passes its initial (uniform) `q_hat` to every epoch, so
its average restarts at each epoch; here it runs over the whole training, as
the paper's does.

The labelled loss is TLlib's (`terms.labelled_loss`). Four training passes
in TLlib's order: labelled weak, labelled strong, unlabelled weak (no
gradient), unlabelled strong.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register, terms


@register("debiasmatch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DebiasMatch(base.Method):
  """FixMatch on logits adjusted by the running mean unlabelled prediction.

  Attributes:
    threshold: confidence (of the adjusted weak-view prediction) above which
      it is a label.
    tau: strength of the adjustment.
    momentum: of the running mean prediction `q_hat`.
    trade_off: weight of the self-training loss.
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
  """

  target_views = ("image_strong",)

  threshold: float
  tau: float
  momentum: float
  trade_off: float
  trade_off_cls_strong: float

  def __post_init__(self):
    if not 0 <= self.threshold < 1 or not 0 <= self.momentum < 1:
      raise ValueError(f"config.method.threshold={self.threshold} and momentum="
                       f"{self.momentum} must be in [0, 1)")

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def init_method_state(self, ctx, variables):
    dtype = jax.tree.leaves(variables["params"])[0].dtype
    return {"q_hat": jnp.full((ctx.num_classes,), 1.0 / ctx.num_classes, dtype)}

  def train_step(self, ctx, state, batch, rng):
    source, target = batch["source"], batch["target"]
    labelled_rng, weak_rng, strong_rng = jax.random.split(rng, 3)
    q_hat = state.method_state["q_hat"]

    def loss_fn(variables):
      cls_loss, logits, variables = terms.labelled_loss(
          ctx, variables, source, labelled_rng, trade_off_strong=self.trade_off_cls_strong)
      (_, weak_logits), variables = ctx.apply_classifier(variables, target["image"], train=True,
                                                         rng=weak_rng)
      weak_logits = jax.lax.stop_gradient(weak_logits)
      new_q_hat = (self.momentum * q_hat + (1.0 - self.momentum)
                   * jnp.mean(jax.nn.softmax(weak_logits), axis=0)).astype(q_hat.dtype)
      (_, strong_logits), variables = ctx.apply_classifier(variables, target["image_strong"],
                                                           train=True, rng=strong_rng)
      adjustment = self.tau * jnp.log(new_q_hat)
      self_training, mask, _ = losses.confidence_self_training_loss(
          strong_logits + adjustment, weak_logits - adjustment, threshold=self.threshold)
      transfer = self.trade_off * self_training
      return cls_loss + transfer, (variables, {
          "cls_loss": cls_loss, "transfer_loss": transfer, "pseudo_label_ratio": mask.mean(),
          **ctx.supervised_metrics(logits, source["label"]),
          "_q_hat": new_q_hat})  # not logged: the new state's

    state, metrics = ctx.update(state, "main", loss_fn)
    new_q_hat = metrics.pop("_q_hat")
    metrics["q_hat_max"] = jnp.max(new_q_hat)
    return state.replace(method_state={**state.method_state, "q_hat": new_q_hat}), metrics
