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
  source_values = jnp.linalg.svd(as_float_matrix(source), compute_uv=False)
  target_values = jnp.linalg.svd(as_float_matrix(target), compute_uv=False)
  return jnp.sum(jnp.square(source_values[:k])) + jnp.sum(jnp.square(target_values[:k]))


__all__ = ["bsp"]
