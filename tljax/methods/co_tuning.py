"""Co-Tuning (You et al., "Co-Tuning for Transfer Learning", NeurIPS 2020):
fine-tuning that keeps training the pretrained model's own head too.

The pretrained model's source head (`method/source_head`, the checkpoint's
`head`, loaded from `config.model.init` by `init_from_checkpoint`) stays on the
classifier's features beside the new target head. Once, before step 0, the
category relationship `p(y_s | y_t)` is learnt from the starting model's
source-head probabilities on the labelled training split (TLlib's
`Relationship`: per target class, their mean; `tljax.losses.category_relationship`),
and every step adds

    trade_off * CE(source head(features), relationship[y_t])

(TLlib's `CoTuningLoss`: 2.3). TLlib trains the source head at the backbone's
rate (0.1x with `--finetune`), as `configs/co_tuning.py` does through
`param_groups`. TLlib's source head sits on the pooled backbone output with an
identity bottleneck; here it reads the classifier's features (the pretrained
bottleneck's output when the checkpoint has one), where the pretrained head sat.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from absl import logging
import flax
import jax
import jax.numpy as jnp

from tljax import losses
from tljax import workdir as workdir_lib
from tljax.methods import base, register
from tljax.models import checkpoints
from tljax.models.heads import create_head

SOURCE_HEAD = "source_head"


def checkpoint_head(path: str, *, backbone: str) -> dict[str, Any]:
  """`{collection: head variables}` of a pretrained classifier: a tljax run's
  `head` (every collection), or a checkpoint file's classification layer
  (torchvision `fc`, timm / big_vision `head`)."""
  if workdir_lib.is_workdir(path):
    variables, _ = workdir_lib.classifier_variables(path)
    return {c: tree["head"] for c, tree in variables.items()
            if isinstance(tree, Mapping) and "head" in tree}
  checkpoint = checkpoints.read(path, backbone=backbone)
  prefix = "params/head/"
  head = {key[len(prefix):]: value for key, value in checkpoint.arrays.items()
          if key.startswith(prefix)}
  if not head:
    raise ValueError(f"{path} has no classification head: Co-Tuning needs the pretrained "
                     "model's own head (its source classes)")
  return {"params": flax.traverse_util.unflatten_dict(head, sep="/")}


@register("co_tuning")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CoTuning(base.Method):
  """Cross-entropy plus the source head trained towards the category relationship.

  Attributes:
    trade_off: weight of the Co-Tuning loss (TLlib 2.3).
    num_source_classes: classes of the pretrained model's head.
  """

  inputs = ("source",)
  refresh_every = base.REFRESH_ONCE
  refresh_domain = "source"

  trade_off: float
  num_source_classes: int

  def networks(self, num_classes, classifier):
    head_type = classifier.head_type or ("two_layer" if classifier.head_hidden else "linear")
    return {SOURCE_HEAD: create_head(head_type, self.num_source_classes,
                                     hidden=classifier.head_hidden,
                                     dropout=classifier.head_dropout, dtype=classifier.dtype,
                                     init=classifier.init_scheme)}

  def init_networks(self, ctx, rng, variables, outputs):
    params_rng, dropout_rng = jax.random.split(rng)
    head = ctx.networks[SOURCE_HEAD]
    return {SOURCE_HEAD: dict(head.init({"params": params_rng, "dropout": dropout_rng},
                                        outputs.source_features, train=False))}

  def init_from_checkpoint(self, variables, path, *, backbone):
    loaded = checkpoint_head(path, backbone=backbone)
    out = dict(variables)
    for collection, tree in loaded.items():
      mine = out[collection]["method"][SOURCE_HEAD]
      shapes = jax.tree.map(jnp.shape, flax.core.unfreeze(mine))
      theirs = jax.tree.map(jnp.shape, flax.core.unfreeze(tree))
      if shapes != theirs:
        raise ValueError(f"the head of {path} ({theirs}) does not fit the source head "
                         f"({shapes}): set config.method.num_source_classes to the number of "
                         "classes it was trained on, and config.model.head_type / head_hidden "
                         "as it had them")
      out = base.with_owned(out, ("method", SOURCE_HEAD), {collection: tree})
    logging.info("Co-Tuning: source head (%d classes) from %s.", self.num_source_classes, path)
    return out

  def init_method_state(self, ctx, variables):
    uniform = jnp.full((ctx.num_classes, self.num_source_classes), 1.0 / self.num_source_classes)
    return {"relationship": uniform}

  def refresh(self, ctx, state, predict):
    features, _, labels = predict(base.owned(state.variables, base.CLASSIFIER))
    source_logits = jax.jit(
        lambda variables, features: ctx.apply_network(SOURCE_HEAD, variables, features,
                                                      train=False)[0]
    )(state.variables, jnp.asarray(features))
    relationship = losses.category_relationship(jax.nn.softmax(source_logits),
                                                jnp.asarray(labels),
                                                num_classes=ctx.num_classes)
    sharding = jax.tree.leaves(state.params)[0].sharding
    return state.replace(method_state={**state.method_state,
                                       "relationship": jax.device_put(relationship, sharding)})

  def train_step(self, ctx, state, batch, rng):
    source = batch["source"]
    cls_rng, head_rng = jax.random.split(rng)
    targets = state.method_state["relationship"][source["label"]]

    def loss_fn(variables):
      (features, logits), variables = ctx.apply_classifier(variables, source["image"],
                                                           train=True, rng=cls_rng)
      source_logits, variables = ctx.apply_network(SOURCE_HEAD, variables, features, train=True,
                                                   rng=head_rng)
      cls_loss = base.cross_entropy(logits, source["label"])
      co_tuning = losses.co_tuning_loss(source_logits, targets)
      return cls_loss + self.trade_off * co_tuning, (variables, {
          "cls_loss": cls_loss, "co_tuning": co_tuning,
          "transfer_loss": self.trade_off * co_tuning,
          "source_train_accuracy": base.accuracy(logits, source["label"])})

    return ctx.update(state, "main", loss_fn)
