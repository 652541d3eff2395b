"""Batch Spectral Penalization (Chen et al., "Transferability vs.
Discriminability: Batch Spectral Penalization for Adversarial Domain
Adaptation", ICML 2019), TLlib's `BatchSpectralPenalizationLoss`.

A regulariser on bottleneck features added to an adversarial method (DANN,
CDAN); the feature extractor minimises it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float_matrix


def bsp(source: jax.Array, target: jax.Array, *, k: int = 1) -> jax.Array:
  """`sum_{i<=k} (sigma_{s,i}^2 + sigma_{t,i}^2)`: the `k` largest singular
  values of the source and of the target feature matrices, squared
  (TLlib and the paper: `k = 1`).

  Args:
    source: `(n_s, *)` source features.
    target: `(n_t, *)` target features.
    k: number of leading singular values penalised.
  """
  return _top_squared_singular_values(source, k) + _top_squared_singular_values(target, k)


def _top_squared_singular_values(x: jax.Array, k: int) -> jax.Array:
  """Sum of the `k` largest `sigma_i^2` of `x`: the eigenvalues of its smaller Gram
  matrix (`x x^T` or `x^T x`), a symmetric eigenproblem several times cheaper
  than an SVD of `x` (the batch is usually much smaller than the feature width)."""
  x = as_float_matrix(x)
  gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
  eigenvalues = jnp.linalg.eigvalsh(gram)  # ascending
  return jnp.sum(eigenvalues[-k:])


__all__ = ["bsp"]
