"""Information maximisation (Liang et al., "Do We Really Need to Access the
Source Data? Source Hypothesis Transfer for Unsupervised Domain Adaptation",
ICML 2020): SHOT's target loss without pseudo-labels.

Confident individual predictions (low mean entropy) that are diverse over the
batch (high entropy of the mean prediction); after Krause et al.,
"Discriminative clustering by regularized information maximization", NIPS 2010.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float
from tljax.losses.entropy import entropy


def information_maximization(logits: jax.Array, *, epsilon: float = 1e-5) -> jax.Array:
  """`L_ent - L_div` of SHOT's Eq. 2.

      p_i = softmax(logits_i),  pbar = mean_i p_i
      L_ent = mean_i -sum_c p_ic log(p_ic + eps)
      L_div = -sum_c pbar_c log(pbar_c + eps)

  i.e. the mean prediction entropy minus the entropy of the mean prediction
  (the paper writes `L_div = sum_c pbar_c log pbar_c` and adds it). The
  authors' code uses `eps = 1e-5` in both logs.

  Args:
    logits: `(n, C)` target logits.
    epsilon: offset inside the logs.
  """
  probs = jax.nn.softmax(as_float(logits), axis=-1)
  mean_entropy = jnp.mean(entropy(probs, epsilon=epsilon))
  diversity = entropy(jnp.mean(probs, axis=0), epsilon=epsilon)
  return mean_entropy - diversity


__all__ = ["information_maximization"]
