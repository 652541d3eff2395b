"""UAN (You et al., "Universal Domain Adaptation", CVPR 2019).

Universal domain adaptation: each domain may hold classes the other lacks,
and which ones is unknown. UAN weighs every example by its
"transferability" (`tljax.losses.uan_transferability`): an example of a
shared class has uncertain predictions (high normalised entropy) and looks
like the other domain to a discriminator `D'` trained without reversal on
stopped features. The adversarial discriminator `D` aligns the two domains
with those weights (the min-max normalised weights of the batch,
`uan_normalize`), so private classes take little part:

    loss = CE(source) + trade_off * [mean(w_s BCE(D(f_s), 1)) + mean(w_t BCE(D(f_t), 0))]
           + BCE(D'(f_s), 1) + BCE(D'(f_t), 0)

At evaluation a target example is "unknown" when its transferability
`w_t = D'(f) - H(p) / log K` falls below `w_0` (`predict_labels`).

The authors' code (github.com/thuml/Universal-Domain-Adaptation, main.py,
net.py, lib.py), followed here: one pass per domain; both discriminators
`Linear(1024) -> ReLU -> Dropout(0.5)` twice then `Linear(1)` (no BatchNorm);
`D` behind a reversal layer whose coefficient `2 / (1 + exp(-10 i / 10000)) - 1`
counts its calls `i`, two per step (source then target), so the source batch
reads call `2 step` and the target batch `2 step + 1`; source weights at class
temperature 10, target weights at 1 (and 1 at test); `w_0 = -0.5`; the
cross-entropy applied to the softmax *probabilities* (`nn.CrossEntropyLoss` on
the classifier's softmax output: `cross_entropy_on='probabilities'`; the
paper's Eq. 1 on logits is `'logits'`); their classifier's bottleneck is one
linear layer (`configs/uan.py` sets it on Office-31). Not followed: their
class-balanced source sampler, and their learning-rate decay that stops at
step 10,000 (tljax's inverse schedule goes on).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register
from tljax.models.heads import DomainDiscriminator

CROSS_ENTROPY_INPUTS = ("probabilities", "logits")


@register("uan")
@dataclasses.dataclass(frozen=True, kw_only=True)
class UAN(base.Method):
  """Transferability-weighted adversarial alignment, and the `w_0` rejection rule.

  Attributes:
    trade_off: weight of the weighted adversarial loss (the authors: 1).
    hidden_sizes: both discriminators' hidden layers (1024, 1024).
    dropout: their dropout (0.5).
    source_class_temperature, target_class_temperature: the class
      temperatures of the training weights (10 and 1).
    domain_temperature: the discriminator's temperature (1).
    w0: the rejection threshold on the target transferability (-0.5).
    grl_alpha, grl_max_calls: the reversal coefficient
      `2 / (1 + exp(-alpha i / max_calls)) - 1` of call `i` (10, 10000).
    cross_entropy_on: 'probabilities' (the authors' code) or 'logits'.
  """

  settings = ("closed_set", "partial", "universal")

  trade_off: float
  hidden_sizes: Sequence[int]
  dropout: float
  source_class_temperature: float
  target_class_temperature: float
  domain_temperature: float
  w0: float
  grl_alpha: float
  grl_max_calls: int
  cross_entropy_on: str

  def __post_init__(self):
    if self.cross_entropy_on not in CROSS_ENTROPY_INPUTS:
      raise ValueError(f"config.method.cross_entropy_on must be one of {CROSS_ENTROPY_INPUTS}, "
                       f"got {self.cross_entropy_on!r}")

  def networks(self, num_classes, classifier):
    make = lambda: DomainDiscriminator(tuple(self.hidden_sizes), dtype=classifier.dtype,
                                       batch_norm=False, dropout=self.dropout)
    return {"discriminator": make(), "discriminator_separate": make()}

  def init_networks(self, ctx, rng, variables, outputs):
    keys = jax.random.split(rng)
    return {name: dict(ctx.networks[name].init({"params": key}, outputs.source_features,
                                               train=False))
            for name, key in zip(("discriminator", "discriminator_separate"), keys)}

  def _coeff(self, call: jax.Array) -> jax.Array:
    return losses.warm_start_coeff(call, alpha=self.grl_alpha, max_steps=self.grl_max_calls)

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    forward_rng, *keys = jax.random.split(rng, 5)
    outputs, variables = ctx.forward_domains(variables, source["image"], target["image"],
                                             source["label"], forward_rng, joint=False)
    if self.cross_entropy_on == "probabilities":
      cls_loss = base.cross_entropy(jax.nn.softmax(outputs.source_logits), source["label"])
    else:
      cls_loss = ctx.supervised_loss(outputs.source_logits, source["label"])

    def discriminate(name, features, key, coeff=None):
      if coeff is not None:
        features = losses.gradient_reversal(features, coeff)
      return ctx.apply_network(name, variables, features, train=True, rng=key)[0]

    call = 2 * jnp.asarray(step, jnp.int32)
    d_source = discriminate("discriminator", outputs.source_features, keys[0], self._coeff(call))
    d_target = discriminate("discriminator", outputs.target_features, keys[1],
                            self._coeff(call + 1))
    stopped = jax.lax.stop_gradient
    separate_source = discriminate("discriminator_separate", stopped(outputs.source_features),
                                   keys[2])
    separate_target = discriminate("discriminator_separate", stopped(outputs.target_features),
                                   keys[3])
    source_weights = losses.uan_normalize(losses.uan_transferability(
        separate_source, outputs.source_logits, domain="source",
        class_temperature=self.source_class_temperature,
        domain_temperature=self.domain_temperature))
    target_weights = losses.uan_normalize(losses.uan_transferability(
        separate_target, outputs.target_logits, domain="target",
        class_temperature=self.target_class_temperature,
        domain_temperature=self.domain_temperature))
    # The authors sum the two domains' mean losses; domain_adversarial_loss halves that sum.
    adversarial = 2 * losses.domain_adversarial_loss(d_source, d_target,
                                                     source_weights=source_weights,
                                                     target_weights=target_weights)
    separate = 2 * losses.domain_adversarial_loss(separate_source, separate_target)
    metrics = {"cls_loss": cls_loss, "transfer_loss": adversarial, "separate_domain_loss": separate,
               "domain_accuracy": losses.domain_accuracy(d_source, d_target),
               "separate_domain_accuracy": losses.domain_accuracy(separate_source,
                                                                  separate_target),
               "grl_coeff": self._coeff(call),
               **ctx.supervised_metrics(outputs.source_logits, source["label"])}
    return cls_loss + self.trade_off * adversarial + separate, (variables, metrics)

  def predict_labels(self, ctx, variables, features, logits, threshold):
    """The authors' test: `w_t < w0` is unknown, else the arg-max
    (`threshold`, the other methods' rule, is not read)."""
    del threshold
    domain_logits, _ = ctx.apply_network("discriminator_separate", variables, features,
                                         train=False)
    weights = losses.uan_transferability(domain_logits, logits, domain="target",
                                         class_temperature=1.0,
                                         domain_temperature=self.domain_temperature)
    labels = jnp.argmax(logits, axis=-1)
    return jnp.where(weights < self.w0, ctx.labels.unknown_label, labels)
