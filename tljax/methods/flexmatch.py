"""FlexMatch (Zhang et al., "FlexMatch: Boosting Semi-Supervised Learning
with Curriculum Pseudo Labeling", NeurIPS 2021), as TLlib's semi-supervised
`flexmatch.py`.

FixMatch with a threshold per class that follows how far each class has been
learnt. The train state keeps, for every unlabelled example, the class of its
latest weak-view prediction whose confidence exceeded `threshold` (-1 before
any: `method_state['predictions']`, indexed by the example's position in the
unlabelled split). Each step, from those, every class `c` gets the threshold
`threshold * M(beta(c))` (`losses.flexmatch_thresholds`: beta is the class's
count over the largest count, M the convex `x / (2 - x)`), so classes few
examples are confidently predicted as get a low threshold and all classes
start at 0. A weak-view prediction above its class's threshold labels a
cross-entropy on the strong view (mean over the batch); afterwards the
examples whose confidence exceeds `threshold` record their prediction.

The labelled loss is TLlib's (`terms.labelled_loss`). Four training passes
in TLlib's order: labelled weak, labelled strong, unlabelled weak (no
gradient), unlabelled strong.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from tljax import losses
from tljax.methods import base, register, terms


@register("flexmatch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FlexMatch(base.Method):
  """Pseudo-labels of the weak view for the strong view, thresholded per class.

  Attributes:
    threshold: the fixed threshold tau (thresholds are tau * M(beta(c))).
    trade_off: weight of the self-training loss.
    trade_off_cls_strong: weight of the labelled strong-view cross-entropy.
    warmup: FlexMatch's threshold warm-up (unused examples count in the
      normalisation; TLlib's default: off).
  """

  target_views = ("image_strong",)

  threshold: float
  trade_off: float
  trade_off_cls_strong: float
  warmup: bool = False

  def __post_init__(self):
    if not 0 <= self.threshold < 1:
      raise ValueError(f"config.method.threshold={self.threshold} must be in [0, 1)")

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def init_method_state(self, ctx, variables):
    if not ctx.num_target_examples:
      raise ValueError("FlexMatch keeps a prediction per unlabelled example, and the "
                       "unlabelled split is empty")
    return {"predictions": jnp.full((ctx.num_target_examples,), -1, jnp.int32)}

  def train_step(self, ctx, state, batch, rng):
    source, target = batch["source"], batch["target"]
    labelled_rng, weak_rng, strong_rng = jax.random.split(rng, 3)
    predictions = state.method_state["predictions"]
    class_thresholds = losses.flexmatch_thresholds(predictions, ctx.num_classes,
                                                   threshold=self.threshold, warmup=self.warmup)

    def loss_fn(variables):
      cls_loss, logits, variables = terms.labelled_loss(
          ctx, variables, source, labelled_rng, trade_off_strong=self.trade_off_cls_strong)
      (_, weak_logits), variables = ctx.apply_classifier(variables, target["image"], train=True,
                                                         rng=weak_rng)
      probs = jax.nn.softmax(jax.lax.stop_gradient(weak_logits))
      confidence, pseudo_labels = jnp.max(probs, -1), jnp.argmax(probs, -1).astype(jnp.int32)
      mask = (confidence > class_thresholds[pseudo_labels]).astype(probs.dtype)
      (_, strong_logits), variables = ctx.apply_classifier(variables, target["image_strong"],
                                                           train=True, rng=strong_rng)
      per_example = optax.softmax_cross_entropy_with_integer_labels(
          strong_logits.astype(probs.dtype), pseudo_labels)
      transfer = self.trade_off * jnp.mean(per_example * mask)
      return cls_loss + transfer, (variables, {
          "cls_loss": cls_loss, "transfer_loss": transfer, "pseudo_label_ratio": mask.mean(),
          **ctx.supervised_metrics(logits, source["label"]),
          # Not logged: read below to update the recorded predictions.
          "_confidence": confidence, "_pseudo_labels": pseudo_labels})

    state, metrics = ctx.update(state, "main", loss_fn)
    confidence, pseudo_labels = metrics.pop("_confidence"), metrics.pop("_pseudo_labels")
    predictions = record_predictions(predictions, target["index"], pseudo_labels,
                                     confidence > self.threshold)
    metrics["mean_class_threshold"] = class_thresholds.mean()
    return state.replace(method_state={**state.method_state, "predictions": predictions}), metrics


def record_predictions(predictions: jax.Array, index: jax.Array, labels: jax.Array,
                       selected: jax.Array) -> jax.Array:
  """`predictions` with `labels[i]` written at `index[i]` for every selected
  `i`: TLlib's `net_outputs[idx[selected]] = pseudo_labels[selected]`. An
  example twice in a batch (a batch across two passes over the split) keeps
  its last selected prediction, so the result does not depend on the
  scatter's order."""
  order = jnp.arange(index.shape[0])
  overwritten = jnp.any((index[None, :] == index[:, None]) & (order[None, :] > order[:, None])
                        & selected[None, :], axis=1)
  # Indices past the end are dropped: unselected or overwritten examples.
  index = jnp.where(selected & ~overwritten, index, predictions.shape[0])
  return predictions.at[index].set(labels.astype(predictions.dtype), mode="drop")
