"""DELTA (Li et al., "DELTA: Deep Learning Transfer using Feature Map with
Attention for Convolutional Networks", ICLR 2019): fine-tuning that keeps the
network's feature maps near the starting network's.

    loss = CE + trade_off_backbone Omega(w) + trade_off_head/2 |w_new|^2

`Omega` compares the outputs of chosen layers (`layers`: a regex over module
paths of the classifier, e.g. `backbone/conv[0-9]+`, read with flax's
`capture_intermediates`, so no backbone knows about it) between the network
being trained and the starting network `w0` (kept in `method_state`, run in
evaluation mode, as TLlib's frozen `source_classifier.eval()`), on the same
batch:

* `regularization='feature_map'`: TLlib's `BehavioralRegularization`, the
  plain squared distance;
* `regularization='attention_feature_map'` (TLlib's default): its
  `AttentionBehavioralRegularization`, each channel's distance weighted by how
  much that channel matters to a classifier on the starting features.

The channel attention (once, before step 0, over the labelled training split,
as TLlib computes it before training): a softmax-regression classifier is
trained on the starting network's features (`attention_steps` full-batch SGD
steps, momentum 0.9, Nesterov, `attention_lr`); then, for every channel `c` of
every chosen layer, the layer's filter `c` (its kernel's `[..., c]` slice) is
zeroed in the starting network and the increase of the classifier's
cross-entropy over the training split is the channel's importance; per layer,
the importances are standardised and `softmax(z / attention_temperature)`
(TLlib: 5) is the attention (`tljax.losses.channel_attention`).

Where this differs from TLlib's `calculate_channel_attention`: TLlib means to
freeze the backbone while it trains that classifier, but its
`classifier.backbone.requires_grad = False` sets a plain module attribute, so
its whole network trains for 10 epochs from the pretrained weights before the
channels are scored; here the starting network stays as it is (the classifier
is trained on its features, which is what the paper describes). TLlib averages
the loss increases over 10 minibatches of 32; here they are computed over the
whole (possibly subsampled) training split, in evaluation mode as in TLlib.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tljax import losses
from tljax.methods import base, register
from tljax.methods.l2_sp import check_pretrained_regex, classifier_partition

REGULARIZATIONS = ("attention_feature_map", "feature_map")


def capture_filter(layers: str):
  """flax `capture_intermediates` filter: the `__call__` output of every module
  whose '/'-joined path inside the classifier fullmatches `layers`."""
  pattern = re.compile(layers)
  return lambda module, method_name: (method_name == "__call__"
                                      and pattern.fullmatch("/".join(module.path)) is not None)


def captured(intermediates: Any) -> dict[str, jax.Array]:
  """`{module path: output}` from a flax `intermediates` collection."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
  return {"/".join(path[:-1]): value[0] for path, value in flat.items()}


def layer_kernels(classifier_params: Any, layers: str) -> dict[str, tuple[str, ...]]:
  """`{module path: kernel path}` of the modules `layers` matches that have a kernel."""
  pattern = re.compile(layers)
  out = {}
  for path in flax.traverse_util.flatten_dict(classifier_params):
    module = "/".join(path[:-1])
    if path[-1] == "kernel" and pattern.fullmatch(module):
      out[module] = path
  return dict(sorted(out.items()))


def feature_maps(classifier, variables: base.Variables, images: jax.Array, layers: str, *,
                 train: bool, rng: jax.Array | None = None
                 ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array], base.Variables]:
  """`(features, logits)`, the outputs of the modules `layers` matches, and the
  classifier variables with updated BatchNorm statistics (when training)."""
  mutable = ["intermediates"] + ([c for c in variables if c != "params"] if train else [])
  out, updates = classifier.apply(variables, images, train=train, mutable=mutable,
                                  capture_intermediates=capture_filter(layers),
                                  rngs={"dropout": rng} if rng is not None else {})
  updates = dict(updates)
  maps = captured(updates.pop("intermediates", {}))
  return out, maps, {**variables, **updates}


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "learning_rate"))
def fit_softmax_regression(features: jax.Array, labels: jax.Array, *, num_classes: int,
                           steps: int, learning_rate: float) -> tuple[jax.Array, jax.Array]:
  """`(kernel, bias)` of a linear softmax classifier from zeros, `steps`
  full-batch steps of SGD (momentum 0.9, Nesterov) on the mean cross-entropy."""
  params = (jnp.zeros((features.shape[1], num_classes)), jnp.zeros((num_classes,)))
  tx = optax.sgd(learning_rate, momentum=0.9, nesterov=True)

  def loss(p):
    return base.cross_entropy(features @ p[0] + p[1], labels)

  def body(_, carry):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
  return params


@register("delta")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DELTA(base.Method):
  """Cross-entropy, feature-map distance to the starting network, L2 on the new parameters.

  Attributes:
    regularization: 'attention_feature_map' (TLlib's default) or 'feature_map'.
    layers: regex over classifier module paths whose outputs are compared
      (TLlib's ResNet-50: the last `conv3` of each stage).
    pretrained: regex over parameter paths the pretrained model provides;
      the classifier's other parameters get the L2 penalty (TLlib: head and
      bottleneck).
    trade_off_backbone: weight of the feature-map term (TLlib 0.01).
    trade_off_head: weight of `1/2 |w_new|^2` (TLlib 0.01).
    attention_steps: full-batch steps of the attention classifier.
    attention_lr: its learning rate.
    attention_temperature: softmax temperature of the attention (TLlib 5).
  """

  inputs = ("source",)
  refresh_every = base.REFRESH_ONCE
  refresh_domain = "source"

  regularization: str
  layers: str
  pretrained: str
  trade_off_backbone: float
  trade_off_head: float
  attention_steps: int
  attention_lr: float
  attention_temperature: float

  def __post_init__(self):
    if self.regularization not in REGULARIZATIONS:
      raise ValueError(f"config.method.regularization must be one of {REGULARIZATIONS}, got "
                       f"{self.regularization!r}")

  def init_method_state(self, ctx, variables):
    check_pretrained_regex(variables["params"], self.pretrained)
    starting = base.owned(variables, base.CLASSIFIER)
    kernels = layer_kernels(starting["params"], self.layers)
    if not kernels:
      names = sorted({"/".join(p[:-1]) for p in flax.traverse_util.flatten_dict(
          starting["params"])})
      raise ValueError(f"config.method.layers={self.layers!r} matches no module with a kernel; "
                       f"the classifier's modules: {', '.join(names)}")
    attention = {module: jnp.full((_lookup(starting["params"], path).shape[-1],),
                                  1.0 / _lookup(starting["params"], path).shape[-1])
                 for module, path in kernels.items()}
    return {"starting_point": starting, "attention": attention}

  # ------------------------------------------------------------- the step

  def behavioral(self, student: dict, teacher: dict, attention: dict) -> jax.Array:
    names = sorted(attention)
    student_maps, teacher_maps = [student[n] for n in names], [teacher[n] for n in names]
    if self.regularization == "feature_map":
      return losses.behavioral_regularization(student_maps, teacher_maps)
    return losses.attention_behavioral_regularization(student_maps, teacher_maps,
                                                      [attention[n] for n in names])

  def train_step(self, ctx, state, batch, rng):
    source = batch["source"]
    starting = state.method_state["starting_point"]
    _, teacher, _ = feature_maps(ctx.classifier, starting, source["image"], self.layers,
                                 train=False)

    def loss_fn(variables):
      mine = base.owned(variables, base.CLASSIFIER)
      (_, logits), student, mine = feature_maps(ctx.classifier, mine, source["image"],
                                                self.layers, train=True, rng=rng)
      variables = base.with_owned(variables, base.CLASSIFIER,
                                  {k: v for k, v in mine.items() if k != "params"})
      cls_loss = base.cross_entropy(logits, source["label"])
      behavioral = self.behavioral(student, teacher, state.method_state["attention"])
      _, new = classifier_partition(variables["params"], self.pretrained)
      head = losses.l2(new)
      penalty = self.trade_off_backbone * behavioral + self.trade_off_head * head
      return cls_loss + penalty, (variables, {
          "cls_loss": cls_loss, "behavioral": behavioral, "l2_head": head,
          "transfer_loss": penalty,
          "source_train_accuracy": base.accuracy(logits, source["label"])})

    return ctx.update(state, "main", loss_fn)

  # ------------------------------------------------------------- channel attention

  def refresh(self, ctx, state, predict):
    if self.regularization != "attention_feature_map":
      return state
    starting = state.method_state["starting_point"]
    sharding = jax.tree.leaves(state.params)[0].sharding
    features, _, labels = predict(starting)
    labels = jnp.asarray(labels)
    kernel, bias = fit_softmax_regression(jnp.asarray(features), labels,
                                          num_classes=ctx.num_classes,
                                          steps=self.attention_steps,
                                          learning_rate=self.attention_lr)
    loss_of = jax.jit(lambda f: base.cross_entropy(f @ kernel + bias, labels))
    intact = float(loss_of(jnp.asarray(features)))
    attention = {}
    for module, path in layer_kernels(starting["params"], self.layers).items():
      weights = _lookup(starting["params"], path)
      increases = []
      for channel in range(weights.shape[-1]):
        zeroed = weights.at[..., channel].set(0.0)
        params = flax.traverse_util.unflatten_dict(
            {**flax.traverse_util.flatten_dict(starting["params"]), path: zeroed})
        zeroed_features, _, _ = predict({**starting, "params": params})
        increases.append(float(loss_of(jnp.asarray(zeroed_features))) - intact)
      attention[module] = jax.device_put(
          losses.channel_attention(np.asarray(increases, np.float32),
                                   temperature=self.attention_temperature), sharding)
    return state.replace(method_state={**state.method_state, "attention": attention})


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree
