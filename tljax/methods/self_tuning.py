"""Self-Tuning (Wang et al., "Self-Tuning for Data-Efficient Deep Learning",
ICML 2021), as TLlib's semi-supervised `self_tuning.py` and
`tllib/self_training/self_tuning.py`.

A projector (`method/self_tuning/projector`, one linear layer on the
classifier's features, its output scaled to unit norm) gives each image a
query, and a key encoder (an EMA of the classifier and projector,
`method_state['key']`, momentum `momentum` and its own BatchNorm statistics)
gives a second view of it a key. A queue keeps the last `queue_size` keys of
every class (`model_state['queue']`: the keys `(projection_dim, C * K)`, from
unit-norm Gaussian noise, and a pointer per class). The pseudo-group
contrastive loss (`losses.pseudo_group_contrastive`) pulls a query towards
its key and its class's queued keys and away from the other classes'; on
labelled data the class is the label, on unlabelled data the classifier's
prediction (a separate training pass over the query view). After each
contrast the keys join the queue (`losses.enqueue_per_class`). Loss:
cross-entropy of the labelled queries + both contrastive losses.

As TLlib's, both views of every image are strong augmentations (the config
sets the training preprocessing and `config.data.key_preprocess` to the
strong one), and the key encoder is moved towards the classifier twice per
step, before the labelled keys and again before the unlabelled ones. Passes:
the key encoder over the labelled then the unlabelled keys (training mode, no
gradient), then the classifier over the labelled queries, the unlabelled
queries for the pseudo-labels, and again for their contrast.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register
from tljax.models.heads import dense

NAME = "self_tuning"


class PseudoGroupProjector(nn.Module):
  """The projector (unit-norm outputs, PyTorch's `F.normalize`) and the
  per-class queue of keys (`queue` collection)."""

  num_classes: int
  projection_dim: int
  queue_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
    del train
    projection = dense(self.projection_dim, features.shape[-1], self.dtype,
                       "projector")(features)
    if self.is_initializing():
      # The queue is made here and then kept and updated by the method's step
      # (the key encoder's copy of this network has none).
      shape = (self.projection_dim, self.num_classes * self.queue_size)
      # TLlib: `normalize(torch.randn(projection_dim, K * C), dim=0)`.
      self.variable("queue", "keys", lambda: _unit_columns(
          jax.random.normal(self.make_rng("params"), shape, self.dtype)))
      self.variable("queue", "pointers", lambda: jnp.zeros((self.num_classes,), jnp.int32))
    return _unit_rows(projection)


def _unit_rows(x: jax.Array) -> jax.Array:
  """PyTorch's `F.normalize(x, dim=1)`: `x / max(||x||, 1e-12)` per row."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _unit_columns(x: jax.Array) -> jax.Array:
  return _unit_rows(x.T).T


@register("self_tuning")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfTuning(base.Method):
  """Pseudo-group contrast of queries with a momentum key encoder's keys.

  Attributes:
    projection_dim: the projector's width.
    queue_size: keys kept per class (K).
    momentum: of the key encoder's EMA.
    temperature: of the contrast.
  """

  source_views = ("image_key",)
  target_views = ("image_key",)

  num_classes: int
  projection_dim: int
  queue_size: int
  momentum: float
  temperature: float

  def __post_init__(self):
    if self.queue_size < 1 or self.projection_dim < 1:
      raise ValueError(f"config.method.queue_size={self.queue_size} and projection_dim="
                       f"{self.projection_dim} must be >= 1")
    if not 0 <= self.momentum < 1 or self.temperature <= 0:
      raise ValueError(f"config.method.momentum={self.momentum} must be in [0, 1) and "
                       f"temperature={self.temperature} > 0")

  def networks(self, num_classes, classifier):
    return {NAME: PseudoGroupProjector(num_classes, self.projection_dim, self.queue_size,
                                       dtype=classifier.dtype)}

  def init_networks(self, ctx, rng, variables, outputs):
    return {NAME: dict(ctx.networks[NAME].init({"params": rng}, outputs.source_features))}

  def init_method_state(self, ctx, variables):
    # The key encoder starts as the classifier and projector (TLlib copies the
    # query's parameters; its BatchNorm statistics are the fresh network's,
    # here the loaded ones).
    return {"key": {c: v for c, v in variables.items() if c != "queue"}}

  def _project(self, ctx, variables, images, rng):
    """`(unit-norm projection, logits)` of a training pass of the classifier
    and projector stored in `variables`, and the variables after it."""
    classifier_rng, projector_rng = jax.random.split(rng)
    (features, logits), variables = ctx.apply_classifier(variables, images, train=True,
                                                         rng=classifier_rng)
    projection, variables = ctx.apply_network(NAME, variables, features, train=True,
                                              rng=projector_rng)
    return projection, logits, variables

  def train_step(self, ctx, state, batch, rng):
    source, target = batch["source"], batch["target"]
    rngs = jax.random.split(rng, 5)
    ema = lambda key, query: jax.tree.map(
        lambda k, q: self.momentum * k + (1.0 - self.momentum) * q, key, query)
    # The key encoder, twice moved towards the classifier (TLlib's two calls of
    # `_momentum_update_key_encoder` before one optimizer step).
    key = state.method_state["key"]
    key = {**key, "params": ema(key["params"], state.params)}
    labelled_keys, _, key = self._project(ctx, key, source["image_key"], rngs[0])
    key = {**key, "params": ema(key["params"], state.params)}
    unlabelled_keys, _, key = self._project(ctx, key, target["image_key"], rngs[1])
    labelled_keys, unlabelled_keys = jax.lax.stop_gradient((labelled_keys, unlabelled_keys))
    queue = state.model_state["queue"]["method"][NAME]

    def loss_fn(variables):
      queries, logits, variables = self._project(ctx, variables, source["image"], rngs[2])
      cls_loss = base.cross_entropy(logits, source["label"])
      labelled = losses.pseudo_group_contrastive(
          queries, labelled_keys, queue["keys"], source["label"], num_classes=ctx.num_classes,
          temperature=self.temperature)
      keys, pointers = losses.enqueue_per_class(queue["keys"], queue["pointers"], labelled_keys,
                                                source["label"])
      (_, predictions), variables = ctx.apply_classifier(variables, target["image"], train=True,
                                                         rng=rngs[3])
      pseudo_labels = jnp.argmax(jax.lax.stop_gradient(predictions), -1).astype(jnp.int32)
      unlabelled_queries, _, variables = self._project(ctx, variables, target["image"], rngs[4])
      unlabelled = losses.pseudo_group_contrastive(
          unlabelled_queries, unlabelled_keys, keys, pseudo_labels, num_classes=ctx.num_classes,
          temperature=self.temperature)
      keys, pointers = losses.enqueue_per_class(keys, pointers, unlabelled_keys, pseudo_labels)
      variables = base.with_owned(variables, ("method", NAME),
                                  {"queue": {"keys": keys, "pointers": pointers}})
      transfer = labelled + unlabelled
      return cls_loss + transfer, (variables, {
          "cls_loss": cls_loss, "transfer_loss": transfer, "pgc_labelled": labelled,
          "pgc_unlabelled": unlabelled,
          "source_train_accuracy": base.accuracy(logits, source["label"])})

    state, metrics = ctx.update(state, "main", loss_fn)
    return state.replace(method_state={**state.method_state, "key": key}), metrics
