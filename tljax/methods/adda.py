"""ADDA (Tzeng et al., "Adversarial Discriminative Domain Adaptation", CVPR 2017).

Two encoders (backbone + bottleneck) share the source classifier's head:

1. Source pre-training: the classifier (`params['classifier']`) learns the
   source task, for `pretrain_steps` steps of the run (its own optimizer,
   `pretrain`), or in another run whose workdir `config.model.init` names
   (then `pretrain_steps = 0`).
2. At step `pretrain_steps`, inside the jitted step, the target encoder
   (`params['method']['target']`, with its BatchNorm statistics) becomes a
   copy of the source encoder. From then on the source classifier is frozen
   (no optimizer updates it, and it runs in inference mode so its BatchNorm
   layers use their running statistics, as TLlib's `freeze_bn`), and the
   target encoder plays against a domain discriminator on the bottleneck
   features: source features from the frozen encoder, target features from
   the target encoder.
3. Evaluation classifies with the target encoder and the source head.

Objectives (`objective`):
- 'tllib' (TLlib's `adda.py`, the default): one loss, DANN's domain
  classification loss behind gradient reversal whose coefficient warms up
  from `grl_lo` = 0 to `grl_hi` = 2 over `grl_max_steps` = 1000 adversarial
  steps; one optimizer (`main`) over the target encoder and the
  discriminator; the head is not optimised.
- 'paper' (the paper's Eq. 8-9): two phases per step, as in GAN training:
  the discriminator (`discriminator` optimizer) minimises its domain loss on
  `[source; target]`, then the target encoder (`encoder` optimizer) minimises
  the same discriminator's loss with inverted labels (target called source).
  The discriminator's BatchNorm statistics are updated in its own phase only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register, terms
from tljax.models.heads import DomainDiscriminator

OBJECTIVES = ("tllib", "paper")
TARGET = ("method", "target")
_HEAD = "head"


def encoder_variables(classifier_variables: base.Variables) -> base.Variables:
  """A classifier's variables without its head: the encoder (backbone, bottleneck)."""
  return {c: {k: v for k, v in tree.items() if k != _HEAD}
          for c, tree in classifier_variables.items()}


def target_classifier(variables: base.Variables) -> base.Variables:
  """The source classifier's variables with the target encoder in place of its own."""
  source = base.owned(variables, base.CLASSIFIER)
  target = base.owned(variables, TARGET)
  return {c: {**tree, **target.get(c, {})} for c, tree in source.items()}


@register("adda")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ADDA(base.Method):
  """Adversarial adaptation of a separate target encoder.

  Attributes:
    pretrain_steps: source-only steps before the adversarial phase (0 when
      the classifier comes from a source-only run through `config.model.init`).
    pretrain_lr_scale: pre-training learning rate relative to the main one.
    objective: 'tllib' or 'paper' (see the module docstring).
    hidden_sizes: the discriminator's hidden widths.
    grl_alpha, grl_lo, grl_hi, grl_max_steps: the warm-started reversal
      coefficient of the 'tllib' objective, counted from the first
      adversarial step.
  """

  pretrain_steps: int
  pretrain_lr_scale: float
  objective: str
  hidden_sizes: Sequence[int]
  grl_alpha: float
  grl_lo: float
  grl_hi: float
  grl_max_steps: int

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"config.method.objective must be one of {OBJECTIVES}, "
                       f"got {self.objective!r}")

  def trained_start_reason(self):
    if self.pretrain_steps:
      return ""
    return "with method.pretrain_steps=0 it skips its source pre-training"

  # ------------------------------------------------------------- construction

  def networks(self, num_classes, classifier):
    return {"discriminator": DomainDiscriminator(tuple(self.hidden_sizes),
                                                 dtype=classifier.dtype)}

  def init_networks(self, ctx, rng, variables, outputs):
    discriminator = ctx.networks["discriminator"].init({"params": rng}, outputs.source_features,
                                                       train=False)
    # A placeholder of the right structure: the copy is taken at the switch,
    # after `config.model.init` has been loaded.
    return {"discriminator": dict(discriminator), "target": encoder_variables(variables)}

  def optimizers(self):
    specs = {}
    if self.pretrain_steps:
      specs["pretrain"] = base.OptimizerSpec("classifier/.*", self.pretrain_lr_scale)
    if self.objective == "tllib":
      specs["main"] = base.OptimizerSpec("method/(target|discriminator)/.*")
    else:
      specs["discriminator"] = base.OptimizerSpec("method/discriminator/.*")
      specs["encoder"] = base.OptimizerSpec("method/target/.*")
    return specs

  def phase_boundaries(self):
    return (self.pretrain_steps,) if self.pretrain_steps else ()

  # ------------------------------------------------------------- the step

  def train_step(self, ctx, state, batch, rng):
    adapt = lambda s: self.adversarial_step(ctx, s, batch, rng)
    return terms.pretrain_then(ctx, state, batch, rng, self.pretrain_steps,
                               self.pretrain_lr_scale, adapt)

  def start_target(self, state: base.TrainState) -> base.TrainState:
    """At step `pretrain_steps`, the target encoder becomes the source encoder."""
    variables = state.variables
    switch = state.step == self.pretrain_steps
    source = encoder_variables(base.owned(variables, base.CLASSIFIER))
    target = jax.tree.map(lambda s, t: jnp.where(switch, s, t), source,
                          base.owned(variables, TARGET))
    return state.replace_variables(base.with_owned(variables, TARGET, target))

  def _target_features(self, ctx, variables, images, rng):
    """Target-encoder features in training mode, and the variables with the
    target encoder's updated BatchNorm statistics."""
    mine = target_classifier(variables)
    mutable = [c for c in mine if c != "params"]
    out = ctx.classifier.apply(mine, images, train=True, mutable=mutable, rngs={"dropout": rng})
    if not mutable:
      return out[0], variables
    (features, _), updates = out
    return features, base.with_owned(variables, TARGET, encoder_variables(updates))

  def adversarial_step(self, ctx, state, batch, rng):
    """One adversarial step: the source classifier is only read (inference mode)."""
    state = self.start_target(state)
    (source_features, _), _ = ctx.apply_classifier(state.variables, batch["source"]["image"],
                                                   train=False)
    source_features = jax.lax.stop_gradient(source_features)
    target_images = batch["target"]["image"]
    adversarial_step = state.step - self.pretrain_steps
    if self.objective == "tllib":
      return self._tllib_update(ctx, state, source_features, target_images, adversarial_step, rng)
    return self._paper_updates(ctx, state, source_features, target_images, rng)

  def _tllib_update(self, ctx, state, source_features, target_images, adversarial_step, rng):
    encoder_rng, discriminator_rng = jax.random.split(rng)
    coeff = losses.warm_start_coeff(adversarial_step, alpha=self.grl_alpha, lo=self.grl_lo,
                                    hi=self.grl_hi, max_steps=self.grl_max_steps)

    def loss_fn(variables):
      target_features, variables = self._target_features(ctx, variables, target_images,
                                                         encoder_rng)
      features = jnp.concatenate([source_features, target_features])
      logits, variables = ctx.apply_network("discriminator", variables,
                                            losses.gradient_reversal(features, coeff),
                                            train=True, rng=discriminator_rng)
      n = source_features.shape[0]
      domain_loss = losses.domain_adversarial_loss(logits[:n], logits[n:])
      return domain_loss, (variables, {
          "transfer_loss": domain_loss, "grl_coeff": coeff,
          "domain_accuracy": losses.domain_accuracy(logits[:n], logits[n:])})

    return ctx.update(state, "main", loss_fn)

  def _paper_updates(self, ctx, state, source_features, target_images, rng):
    keys = jax.random.split(rng, 4)
    n = source_features.shape[0]

    def discriminator_loss(variables):
      # The encoder is not trained here: its features and statistics are discarded.
      target_features, _ = self._target_features(ctx, variables, target_images, keys[0])
      features = jax.lax.stop_gradient(jnp.concatenate([source_features, target_features]))
      logits, variables = ctx.apply_network("discriminator", variables, features, train=True,
                                            rng=keys[1])
      domain_loss = losses.domain_adversarial_loss(logits[:n], logits[n:])
      return domain_loss, (variables, {
          "domain_accuracy": losses.domain_accuracy(logits[:n], logits[n:])})

    def encoder_loss(variables):
      target_features, variables = self._target_features(ctx, variables, target_images, keys[2])
      features = jnp.concatenate([source_features, target_features])
      # Batch statistics over [source; target], as in its own phase; its running
      # averages are not updated here.
      logits, _ = ctx.apply_network("discriminator", variables, features, train=True,
                                    rng=keys[3])
      loss = losses.inverted_label_loss(logits[n:])
      return loss, (variables, {"transfer_loss": loss})

    state, discriminator = ctx.update(state, "discriminator", discriminator_loss)
    state, encoder = ctx.update(state, "encoder", encoder_loss)
    return state, {**encoder, "domain_loss": discriminator["loss"],
                   "domain_accuracy": discriminator["domain_accuracy"],
                   "discriminator_grad_norm": discriminator["grad_norm"]}

  # ------------------------------------------------------------- evaluation

  def eval_variables(self, ctx, state, batch_statistics):
    if int(state.step) <= self.pretrain_steps:  # no target encoder yet
      return base.owned(state.variables, base.CLASSIFIER)
    return target_classifier(state.variables)
