"""Batch Nuclear-norm Maximization (Cui et al., "Towards Discriminability and
Diversity: Batch Nuclear-norm Maximization under Label Insufficient
Situations", CVPR 2020).

A target-only regulariser on the classifier's predictions: a large nuclear
norm of the batch prediction matrix means confident (discriminative) and
varied (diverse) predictions. The whole network minimises its negative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float

BNM_NORMALISATIONS = ("singular_values", "batch")


def bnm(logits: jax.Array, *, normalisation: str = "singular_values") -> jax.Array:
  """Negative nuclear norm of the batch prediction matrix.

      A = softmax(logits)                         (B, C)
      loss = -||A||_* / N,    ||A||_* = sum_i sigma_i(A)

  with `N = min(B, C)`, the number of singular values (`normalisation=
  'singular_values'`: the authors' code, `-torch.mean(torch.svd(A)[1])`), or
  `N = B` (`'batch'`: the paper's Eq. 9, `-||A||_* / B`). The two differ by the
  constant factor `B / min(B, C)`, i.e. only in the effective trade-off.

  The gradient is that of the singular values alone (`U^T dA V` on the
  diagonal), which is defined for repeated singular values too.

  Args:
    logits: `(B, C)` target logits.
    normalisation: 'singular_values' or 'batch'.
  """
  if normalisation not in BNM_NORMALISATIONS:
    raise ValueError(f"normalisation must be one of {BNM_NORMALISATIONS}, not {normalisation!r}")
  logits = as_float(logits)
  batch_size, num_classes = logits.shape
  singular_values = jnp.linalg.svd(jax.nn.softmax(logits, axis=-1), compute_uv=False)
  divisor = min(batch_size, num_classes) if normalisation == "singular_values" else batch_size
  return -jnp.sum(singular_values) / divisor


__all__ = ["bnm", "BNM_NORMALISATIONS"]
