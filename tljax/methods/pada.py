"""PADA (Cao et al., "Partial Adversarial Domain Adaptation", ECCV 2018).

Partial domain adaptation: the target holds only some of the source classes.
DANN aligns every source class with the target, so the source-private classes
pull target examples to them; PADA weighs each class by how much of the target
the classifier puts in it, and applies those weights to both losses:

    loss = CE_w(source) + trade_off * DANN_w(source, target)

where `CE_w` is the class-weighted cross-entropy and `DANN_w` the
domain-adversarial loss with each source example weighted by its class and
each target example by the batch's mean source weight
(`tljax.losses.reweight`). The class weights are the target's average softmax
at temperature `T`, divided by their maximum (`pada_class_weights`).

TLlib's example (`examples/domain_adaptation/partial_domain_adaptation/pada.py`):
weights start at 1 and are recomputed every `update_every` = 500 steps over
the target training split, with the classifier in evaluation mode; the
discriminator is DANN's (1024-1024 with BatchNorm, warm-started reversal), one
pass over `[source; target]`. Here `refresh` recomputes them before steps 500,
1000, ... from the state at that point and keeps them in
`TrainState.method_state['class_weights']` (checkpointed, so a resumed run
uses the same weights). Two differences from TLlib, both in the refresh:
TLlib recomputes inside step 499 (the parameters before that step's update)
and predicts the target's training loader (random crops and flips, the last
partial batch dropped); here the parameters after step 499's update and the
evaluation preprocessing of every target example.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from tljax import losses
from tljax.methods import base, register
from tljax.models.heads import DomainDiscriminator


@register("pada")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PADA(base.Method):
  """Class-weighted DANN, the weights from the target's predictions.

  Attributes:
    trade_off: weight of the adversarial loss (TLlib: 1).
    temperature: `T` of the class weights (TLlib: 0.1; 0.01 on Office-Home).
    update_every: steps between recomputations of the class weights (500).
    hidden_sizes: the discriminator's hidden layers (1024, 1024).
    grl_alpha, grl_lo, grl_hi, grl_max_steps: the warm-started reversal
      coefficient (TLlib's DANN: 1, 0, 1, 1000).
  """

  settings = ("closed_set", "partial")

  trade_off: float
  temperature: float
  update_every: int
  hidden_sizes: Sequence[int]
  grl_alpha: float
  grl_lo: float
  grl_hi: float
  grl_max_steps: int

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f"config.method.temperature={self.temperature} must be > 0")
    if self.update_every < 1:
      raise ValueError(f"config.method.update_every={self.update_every} must be >= 1 (steps "
                       "between recomputations of the class weights)")

  def networks(self, num_classes, classifier):
    return {"discriminator": DomainDiscriminator(tuple(self.hidden_sizes),
                                                 dtype=classifier.dtype)}

  def init_networks(self, ctx, rng, variables, outputs):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    return {"discriminator": dict(ctx.networks["discriminator"].init({"params": rng}, features,
                                                                     train=False))}

  def init_method_state(self, ctx, variables):
    # TLlib's weights are 1 until the first recomputation.
    return {"class_weights": jnp.ones((ctx.num_classes,), jnp.float32)}

  def refresh_interval(self, steps_per_target_epoch):
    return self.update_every

  def refresh(self, ctx, state, predict):
    if int(state.step) == 0:
      return state  # the first recomputation is after `update_every` steps
    _, logits = predict(base.owned(state.variables, base.CLASSIFIER))
    weights = np.asarray(losses.pada_class_weights(logits, temperature=self.temperature),
                         np.float32)
    target_classes = list(ctx.labels.target_classes) if ctx.labels is not None else []
    private = sorted(set(range(len(weights))) - set(target_classes))
    if private:
      # Logged for the reader; target classes are the task's, never the step's.
      logging.info("PADA class weights at step %d: mean %.3f on the target's classes, %.3f on "
                   "the others.", int(state.step), weights[target_classes].mean(),
                   weights[private].mean())
    old = state.method_state["class_weights"]
    # Every process computed the same weights; each places its own shards.
    new = jax.make_array_from_callback(weights.shape, old.sharding, lambda index: weights[index])
    return state.replace(method_state={**state.method_state, "class_weights": new})

  def loss(self, ctx, variables, batch, step, rng):
    """The step's loss; `batch['class_weights']` holds the current class weights."""
    source, target, class_weights = batch["source"], batch["target"], batch["class_weights"]
    forward_rng, discriminator_rng = jax.random.split(rng)
    outputs, variables = ctx.forward_domains(variables, source["image"], target["image"],
                                             source["label"], forward_rng, joint=True)
    cls_loss = losses.class_weighted_cross_entropy(outputs.source_logits, source["label"],
                                                   class_weights)
    source_weights, target_weights = losses.pada_adversarial_weights(class_weights,
                                                                      source["label"])
    coeff = losses.warm_start_coeff(step, alpha=self.grl_alpha, lo=self.grl_lo, hi=self.grl_hi,
                                    max_steps=self.grl_max_steps)
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    domain_logits, variables = ctx.apply_network(
        "discriminator", variables, losses.gradient_reversal(features, coeff), train=True,
        rng=discriminator_rng)
    n = outputs.source_features.shape[0]
    transfer = losses.domain_adversarial_loss(domain_logits[:n], domain_logits[n:],
                                              source_weights=source_weights,
                                              target_weights=target_weights)
    metrics = {"cls_loss": cls_loss, "transfer_loss": transfer,
               "domain_accuracy": losses.domain_accuracy(domain_logits[:n], domain_logits[n:]),
               "grl_coeff": coeff, "source_weight_mean": jnp.mean(source_weights),
               **ctx.supervised_metrics(outputs.source_logits, source["label"])}
    return cls_loss + self.trade_off * transfer, (variables, metrics)

  def train_step(self, ctx, state, batch, rng):
    batch = {**batch, "class_weights": state.method_state["class_weights"]}
    return ctx.update(state, "main", lambda v: self.loss(ctx, v, batch, state.step, rng))
