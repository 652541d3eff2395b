"""Adversarial methods: a network of the method's own plays against the features.

DANN (Ganin et al. 2016), CDAN / CDAN+E (Long et al. 2018), MDD (Zhang et al.
2019) and BSP (Chen et al. 2019, on top of DANN). The adversary sits behind a
gradient reversal layer whose coefficient warms up with TLlib's schedule,
computed from the traced step inside the jitted train step. The adversaries'
parameters live in the train state under `discriminator/...` or `adv_head/...`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import register
from tljax.methods.base import Method
from tljax.models.classifier import TwoLayerHead
from tljax.models.layers import torch_linear_init


class _Reversal(Method):
  """Shared fields of the methods with a warm-started gradient reversal layer."""

  grl_alpha: float = 1.0
  grl_lo: float = 0.0
  grl_hi: float = 1.0
  grl_max_steps: int = 1000

  def grl_coeff(self, step: jax.Array) -> jax.Array:
    return losses.warm_start_coeff(step, alpha=self.grl_alpha, lo=self.grl_lo,
                                   hi=self.grl_hi, max_steps=self.grl_max_steps)


@register("dann")
class DANN(_Reversal):
  """Domain-adversarial training: a discriminator tells source (1) from target
  (0) features seen through gradient reversal."""

  trade_off: float = 1.0
  hidden_sizes: Sequence[int] = (1024, 1024)

  def adversarial(self, outputs, step, train):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    coeff = self.grl_coeff(step)
    logits = losses.DomainDiscriminator(tuple(self.hidden_sizes), name="discriminator")(
        losses.gradient_reversal(features, coeff), train)
    n = outputs.source_features.shape[0]
    value = losses.domain_adversarial_loss(logits[:n], logits[n:])
    return value, {"domain_loss": value, "domain_accuracy": losses.domain_accuracy(logits[:n], logits[n:]),
                   "grl_coeff": coeff}

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    value, metrics = self.adversarial(outputs, step, train)
    return self.trade_off * value, metrics


@register("cdan")
class CDAN(_Reversal):
  """Conditional adversarial training on the multilinear map of features and
  (detached) predictions.

  Attributes:
    entropy: CDAN+E, weighting examples by `1 + exp(-H(p))`.
    randomized: use the randomized multilinear map of `randomized_dim` (for
      large `features x classes` products; fixed N(0, 1) matrices drawn once
      from the init key and kept in the state's `constants`).
  """

  trade_off: float = 1.0
  entropy: bool = False
  randomized: bool = False
  randomized_dim: int = 1024
  hidden_sizes: Sequence[int] = (1024, 1024)

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    logits = jnp.concatenate([outputs.source_logits, outputs.target_logits])
    probs = jax.lax.stop_gradient(jax.nn.softmax(logits))
    if self.randomized:
      shapes = (features.shape[-1], probs.shape[-1])
      matrices = self.variable(
          "constants", "randomized_map",
          lambda: losses.init_randomized_map(self.make_rng("params"), *shapes, self.randomized_dim))
      mapped = losses.randomized_multilinear_map(features, probs, *matrices.value)
    else:
      mapped = losses.multilinear_map(features, probs)
    coeff = self.grl_coeff(step)
    d = losses.DomainDiscriminator(tuple(self.hidden_sizes), name="discriminator")(
        losses.gradient_reversal(mapped, coeff), train)
    n = outputs.source_features.shape[0]
    weights = losses.entropy_weights(probs) if self.entropy else None
    value = losses.domain_adversarial_loss(
        d[:n], d[n:],
        source_weights=None if weights is None else weights[:n],
        target_weights=None if weights is None else weights[n:])
    metrics = {"domain_loss": value, "domain_accuracy": losses.domain_accuracy(d[:n], d[n:]),
               "grl_coeff": coeff}
    return self.trade_off * value, metrics


@register("mdd")
class MDD(_Reversal):
  """Margin disparity discrepancy: the adversarial head (behind gradient reversal,
  TLlib's warm start up to `grl_hi = 0.1`) maximises the disparity with the main
  head's predictions; the features minimise it. The term is `-trade_off * D`.

  The adversarial head has the main head's shape: TLlib's MDD uses two-layer
  heads of width 1024 for both (`config.model.head_hidden = 1024` and
  `head_width = 1024` here); `head_width = 0` gives a linear one. Heads start
  from PyTorch's default init (TLlib's MDD draws N(0, 0.01)).
  """

  num_classes: int = 0
  trade_off: float = 1.0
  margin: float = 4.0
  head_width: int = 1024
  head_dropout: float = 0.5
  grl_hi: float = 0.1

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    coeff = self.grl_coeff(step)
    reversed_features = losses.gradient_reversal(features, coeff)
    if self.head_width:
      adv_logits = TwoLayerHead(self.num_classes, self.head_width, self.head_dropout,
                                name="adv_head")(reversed_features, train)
    else:
      init = torch_linear_init(features.shape[-1])
      adv_logits = nn.Dense(self.num_classes, kernel_init=init, bias_init=init,
                            name="adv_head")(reversed_features)
    n = outputs.source_features.shape[0]
    disparity = losses.mdd(outputs.source_logits, adv_logits[:n], outputs.target_logits,
                           adv_logits[n:], margin=self.margin)
    return -self.trade_off * disparity, {"mdd": disparity, "grl_coeff": coeff}


@register("bsp")
class BSP(DANN):
  """DANN plus batch spectral penalization of the top-`k` singular values of the
  source and target feature matrices (TLlib's BSP example builds on DANN)."""

  bsp_trade_off: float = 2e-4
  k: int = 1

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    value, metrics = self.adversarial(outputs, step, train)
    penalty = losses.bsp(outputs.source_features, outputs.target_features, k=self.k)
    return self.trade_off * value + self.bsp_trade_off * penalty, {**metrics, "bsp": penalty}
