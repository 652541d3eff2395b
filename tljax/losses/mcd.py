"""Maximum Classifier Discrepancy (Saito et al., "Maximum Classifier
Discrepancy for Unsupervised Domain Adaptation", CVPR 2018): TLlib's
`classifier_discrepancy` and the MCD-specific `entropy` term.

The method alternates who minimises and who maximises the discrepancy
between two classifier heads on target data (see `tljax/methods/mcd.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float

# TLlib's MCD entropy: log(mean prediction + 1e-6).
MCD_ENTROPY_EPSILON = 1e-6


def classifier_discrepancy(probs1: jax.Array, probs2: jax.Array) -> jax.Array:
  """`d(p1, p2) = mean_i (1/C) sum_c |p1_ic - p2_ic|`: the L1 distance between two
  heads' probabilities, averaged over examples and classes (TLlib's
  `classifier_discrepancy`, the paper's Eq. 1).

  Args:
    probs1: `(n, C)` softmax outputs of the first head.
    probs2: `(n, C)` softmax outputs of the second head.
  """
  return jnp.mean(jnp.abs(as_float(probs1) - as_float(probs2)))


def mcd_entropy(probs: jax.Array, *, epsilon: float = MCD_ENTROPY_EPSILON) -> jax.Array:
  """`-(1/C) sum_c log(mean_i p_ic + epsilon)`: TLlib's MCD `entropy`.

  Not the entropy of the predictions: the cross-entropy between the uniform
  distribution and the batch-mean prediction, which is small when every
  class is predicted, so minimising it keeps the target predictions spread
  over the classes.

  Args:
    probs: `(n, C)` probabilities.
    epsilon: TLlib's offset inside the log.
  """
  return -jnp.mean(jnp.log(jnp.mean(as_float(probs), axis=0) + epsilon))


__all__ = ["classifier_discrepancy", "mcd_entropy", "MCD_ENTROPY_EPSILON"]
