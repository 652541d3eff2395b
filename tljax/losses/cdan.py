"""CDAN's conditioning maps and entropy weights (Long et al., "Conditional
Adversarial Domain Adaptation", NeurIPS 2018), TLlib's
`ConditionalDomainAdversarialLoss`.

CDAN feeds the discriminator `T(f, g)`, a multilinear map of the features `f`
and the class probabilities `g`, instead of `f` alone. TLlib passes
`g = stop_gradient(softmax(logits))` over the concatenated source + target
batch; the maps below take whatever they are given, so that choice belongs to
the method. The rest of the loss is `adversarial.domain_adversarial_loss` on
`DomainDiscriminator(gradient_reversal(T(f, g)))`, weighted by
`entropy_weights` for CDAN+E.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tljax.losses.entropy import entropy



def multilinear_map(features: jax.Array, probs: jax.Array) -> jax.Array:
  """`T(f, g) = g (x) f`, flattened: `(n, F), (n, C) -> (n, C * F)`.

  The layout is TLlib's `MultiLinearMap` (`bmm(g[:, :, None], f[:, None, :])`):
  entry `c * F + j` is `g_c * f_j`.
  """
  outer = jnp.einsum("nc,nf->ncf", probs, features)
  return outer.reshape(outer.shape[0], -1)


def init_randomized_map(key: jax.Array,
                        features_dim: int,
                        num_classes: int,
                        output_dim: int) -> tuple[jax.Array, jax.Array]:
  """The fixed random matrices `(R_f, R_g)`, entries `N(0, 1)` (TLlib's `randn`).

  Returns:
    `R_f` of shape `(features_dim, output_dim)` and `R_g` of shape
    `(num_classes, output_dim)`; the caller keeps them fixed through training.
  """
  key_features, key_probs = jax.random.split(key)
  return (jax.random.normal(key_features, (features_dim, output_dim), jnp.float32),
          jax.random.normal(key_probs, (num_classes, output_dim), jnp.float32))


def randomized_multilinear_map(features: jax.Array,
                               probs: jax.Array,
                               random_features: jax.Array,
                               random_probs: jax.Array) -> jax.Array:
  """`T(f, g) = (f R_f) * (g R_g) / sqrt(output_dim)`, TLlib's
  `RandomizedMultiLinearMap` (used when `F * C` is too large).

  Args:
    features: `(n, F)`.
    probs: `(n, C)`.
    random_features: `R_f`, `(F, D)` from `init_randomized_map`.
    random_probs: `R_g`, `(C, D)`.

  Returns:
    `(n, D)`.
  """
  output_dim = random_features.shape[1]
  return (features @ random_features) * (probs @ random_probs) / math.sqrt(output_dim)


def entropy_weights(probs: jax.Array) -> jax.Array:
  """CDAN+E certainty weights, `w_i = 1 + exp(-H(p_i))`, normalised to mean 1.

      w <- N * w / sum(w)

  exactly as TLlib's `ConditionalDomainAdversarialLoss`, which computes them
  once over the concatenated source + target batch (`N = n_s + n_t`), so the
  two domains are normalised jointly, not each on its own: pass the
  concatenated probabilities and split the result. `H` is TLlib's entropy
  (`log(p + 1e-5)`). The weights carry no gradient (TLlib's `g` is detached).

  Args:
    probs: `(N, C)` class probabilities.

  Returns:
    `(N,)` weights summing to `N`.
  """
  probs = jax.lax.stop_gradient(jnp.asarray(probs))
  weights = 1.0 + jnp.exp(-entropy(probs))
  return weights / jnp.sum(weights) * probs.shape[0]


__all__ = [
    "multilinear_map", "init_randomized_map",
    "randomized_multilinear_map", "entropy_weights",
]
