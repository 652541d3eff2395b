"""Prediction entropy: the entropy-minimisation loss and TLlib's `entropy` helper.

Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization",
NIPS 2004; used on target predictions in domain adaptation. The helper with
TLlib's `epsilon = 1e-5` also builds the certainty weights of CDAN+E and MCC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float

# TLlib's tllib.modules.entropy: H(p) = -sum_c p_c log(p_c + 1e-5).
TLLIB_ENTROPY_EPSILON = 1e-5


def entropy(probs: jax.Array, *, epsilon: float = TLLIB_ENTROPY_EPSILON) -> jax.Array:
  """Per-row entropy `-sum_c p_c log(p_c + epsilon)` of `(n, C)` probabilities."""
  probs = jnp.asarray(probs)
  return -jnp.sum(probs * jnp.log(probs + epsilon), axis=-1)


def entropy_loss(logits: jax.Array, *, epsilon: float = TLLIB_ENTROPY_EPSILON) -> jax.Array:
  """Entropy minimisation: `mean_i H(softmax(logits_i))`.

  Args:
    logits: `(n, C)`.
    epsilon: TLlib's offset inside the log (`entropy(softmax(logits),
      reduction='mean')`); 0 gives the exact entropy from `log_softmax`, which
      is finite for any logits.
  """
  logits = as_float(logits)
  if epsilon:
    return jnp.mean(entropy(jax.nn.softmax(logits, axis=-1), epsilon=epsilon))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))


__all__ = ["TLLIB_ENTROPY_EPSILON", "entropy", "entropy_loss"]
