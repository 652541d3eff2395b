"""Adaptive Feature Norm (Xu et al., "Larger Norm More Transferable: An
Adaptive Feature Norm Approach for Unsupervised Domain Adaptation", ICCV 2019),
TLlib's `AdaptiveFeatureNorm` (stepwise AFN) and the hard variant.

TLlib's AFN adds the loss of the source batch and of the target batch
(`afn(f_s) + afn(f_t)`); the feature extractor minimises it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float_matrix


def _row_norms(x: jax.Array) -> jax.Array:
  """Row L2 norms with gradient 0 at a zero row (PyTorch's `norm`; JAX's is
  NaN there, and all-zero ReLU features do happen)."""
  squared = jnp.sum(jnp.square(x), axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def adaptive_feature_norm(features: jax.Array,
                          *,
                          delta: float = 1.0,
                          radius: float | None = None) -> jax.Array:
  """`mean_i (||f_i|| - r_i)^2` over one batch of features.

  Stepwise AFN (default, TLlib): `r_i = stop_gradient(||f_i||) + delta`, so
  the value is always `delta^2` and the gradient pushes every norm up by
  `delta` per step. Hard AFN (`radius=R`, the paper's fixed target, R = 25
  there): `r_i = R`.

  Args:
    features: `(n, *)`.
    delta: stepwise norm increment.
    radius: fixed target norm for hard AFN; None for stepwise.
  """
  norms = _row_norms(as_float_matrix(features))
  if radius is None:
    target = jax.lax.stop_gradient(norms) + delta
  else:
    target = radius
  return jnp.mean(jnp.square(norms - target))


__all__ = ["adaptive_feature_norm"]
