"""DANN (Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016).

A domain discriminator tells source (1) from target (0) features seen through
a gradient reversal layer whose coefficient warms up with TLlib's schedule.
TLlib's DANN: discriminator 1024-1024 with BatchNorm, coefficient 0 -> 1 over
`grl_max_steps` = 1000 with alpha 1, one pass over `[source; target]`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax import losses
from tljax.methods import terms
from tljax.models.heads import DomainDiscriminator


@terms.register_term("dann")
class DANN(terms.ReversalTerm):
  """The domain-adversarial loss of a discriminator behind gradient reversal."""

  hidden_sizes: Sequence[int]
  # The discriminator reads features only: TLlib runs it on regressors too
  # (examples/domain_adaptation/image_regression/dann.py).
  label_kinds = ("classification", "regression")

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    coeff = self.grl_coeff(step)
    logits = DomainDiscriminator(tuple(self.hidden_sizes), dtype=features.dtype,
                                 name="discriminator")(
        losses.gradient_reversal(features, coeff), train)
    n = outputs.source_features.shape[0]
    value = losses.domain_adversarial_loss(logits[:n], logits[n:])
    return value, {"domain_loss": value,
                   "domain_accuracy": losses.domain_accuracy(logits[:n], logits[n:]),
                   "grl_coeff": coeff}
