"""IWAN (Zhang et al., "Importance Weighted Adversarial Nets for Partial Domain
Adaptation", CVPR 2018).

Partial domain adaptation with two discriminators. The first, `D`, learns to
tell source from target features without touching them (its input is
stopped); source examples it takes for target ones belong to the classes the
target shares, so `w = 1 - D(f_s)`, normalised to mean 1, is each source
example's importance weight (`tljax.losses.iwan_importance_weights`). The
second, `D_0`, plays the usual adversarial game through gradient reversal,
with the source examples weighted by `w`:

    loss = CE + trade_off * (1.5 * adv(D; f_s, f_t stopped) + adv_w(D_0; f_s, f_t))
           + gamma * H(target predictions)

TLlib's example (`examples/domain_adaptation/partial_domain_adaptation/iwan.py`):
both discriminators 1024-1024 without BatchNorm (ReLU, Dropout 0.5), `D_0`
behind DANN's warm-started reversal layer, trade-off 3, one pass over
`[source; target]`; the weights come from a second pass of `D` over the
source features alone (its own dropout draw). The entropy term is the
`entropy_min` term (TLlib's `gamma` = its trade-off, 0.1): `configs/iwan.py`
composes `iwan+entropy_min`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import terms
from tljax.models.heads import DomainDiscriminator

# TLlib's weight of the first discriminator's loss relative to `D_0`'s.
FIRST_DISCRIMINATOR_WEIGHT = 1.5


@terms.register_term("iwan")
class IWAN(terms.ReversalTerm):
  """IWAN's two discriminators: `weight_discriminator` (D) and `discriminator` (D_0).

  Attributes:
    hidden_sizes: both discriminators' hidden layers (TLlib: 1024, 1024).
    dropout: their dropout (TLlib's discriminator without BatchNorm: 0.5).
  """

  hidden_sizes: Sequence[int]
  dropout: float

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    source, target = outputs.source_features, outputs.target_features
    n = source.shape[0]
    make = lambda name: DomainDiscriminator(tuple(self.hidden_sizes), dtype=source.dtype,
                                            batch_norm=False, dropout=self.dropout, name=name)
    weigher, discriminator = make("weight_discriminator"), make("discriminator")
    features = jnp.concatenate([source, target])
    # D learns the domains from features it cannot change.
    d = weigher(jax.lax.stop_gradient(features), train)
    first = losses.domain_adversarial_loss(d[:n], d[n:])
    weights = losses.iwan_importance_weights(weigher(source, train))
    coeff = self.grl_coeff(step)
    d0 = discriminator(losses.gradient_reversal(features, coeff), train)
    second = losses.domain_adversarial_loss(d0[:n], d0[n:], source_weights=weights)
    value = FIRST_DISCRIMINATOR_WEIGHT * first + second
    return value, {"domain_loss": first, "weighted_domain_loss": second,
                   "domain_accuracy": losses.domain_accuracy(d[:n], d[n:]),
                   "weighted_domain_accuracy": losses.domain_accuracy(d0[:n], d0[n:]),
                   "importance_weight_max": jnp.max(weights), "grl_coeff": coeff}
