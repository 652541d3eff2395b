"""CDAN / CDAN+E (Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018).

The discriminator sees the multilinear map of the features and the (detached)
class probabilities over `[source; target]`, behind TLlib's warm-started
gradient reversal; CDAN+E weights examples by `1 + exp(-H(p))`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import terms
from tljax.models.heads import DomainDiscriminator


@terms.register_term("cdan")
class CDAN(terms.ReversalTerm):
  """Conditional adversarial loss on the multilinear map.

  Attributes:
    entropy: CDAN+E, weighting examples by `1 + exp(-H(p))`.
    randomized: use the randomized multilinear map of `randomized_dim` (for
      large `features x classes` products; fixed N(0, 1) matrices drawn once
      from the init key and kept in the state's `constants`).
  """

  entropy: bool
  randomized: bool
  randomized_dim: int
  hidden_sizes: Sequence[int]

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
    d = DomainDiscriminator(tuple(self.hidden_sizes), dtype=mapped.dtype, name="discriminator")(
        losses.gradient_reversal(mapped, coeff), train)
    n = outputs.source_features.shape[0]
    weights = losses.entropy_weights(probs) if self.entropy else None
    value = losses.domain_adversarial_loss(
        d[:n], d[n:],
        source_weights=None if weights is None else weights[:n],
        target_weights=None if weights is None else weights[n:])
    return value, {"domain_loss": value, "domain_accuracy": losses.domain_accuracy(d[:n], d[n:]),
                   "grl_coeff": coeff}
