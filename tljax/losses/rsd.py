"""Representation Subspace Distance (Chen et al., "Representation Subspace
Distance for Domain Adaptation Regression", ICML 2021), TLlib's
`RepresentationSubspaceDistance`.

A regression-specific alignment: instead of matching feature distributions,
which scale-sensitive regressors suffer from, it aligns the subspaces the two
batches' features span (their principal angles) and keeps the bases of the
two subspaces in correspondence. The feature extractor minimises it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float_matrix


# Singular values closer than this (relative to the largest, in squares) count as
# repeated for the SVD's gradient; see `_svd`.
_DEGENERATE = 1e-5


@jax.custom_vjp
def _svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`jnp.linalg.svd(x, full_matrices=False)`, whose gradient stays finite at
  repeated (or zero) singular values.

  The gradient of the singular vectors has the factors `1 / (s_j^2 - s_i^2)`
  and `1 / s_i` (Townsend, "Differentiating the Singular Value
  Decomposition", 2016), infinite where singular values repeat, in JAX as in
  PyTorch's `torch.svd`. There the vectors are not unique (any rotation of a
  repeated pair is as good), and RSD meets that within a few steps: source and
  target features come to share directions, so several principal angles are 0
  (cosines 1) at once and the base mismatch penalty's gradient is infinite.
  Here a gap `d` narrower than `delta = _DEGENERATE * s_max^2` counts as
  repeated: `1/d` becomes `d / delta^2` (0 rotation within an exactly repeated
  pair, bounded near one), and `1/s` likewise below `_DEGENERATE * s_max`.
  Wherever the singular values are further apart the gradient is the exact one.
  """
  return jnp.linalg.svd(x, full_matrices=False)


def _svd_forward(x):
  out = jnp.linalg.svd(x, full_matrices=False)
  return out, out


def _svd_backward(residuals, cotangents):
  u, s, vh = residuals
  grad_u, grad_s, grad_vh = cotangents
  v, grad_v = vh.T, grad_vh.T
  squares = s**2
  tiny = jnp.finfo(s.dtype).tiny
  gap = squares[None, :] - squares[:, None]  # [i, j] = s_j^2 - s_i^2 (0 on the diagonal)
  inverse_gap = _bounded_inverse(gap, _DEGENERATE * jnp.max(squares) + tiny)
  inverse_s = _bounded_inverse(s, _DEGENERATE * jnp.max(s) + tiny)
  from_u = inverse_gap * (u.T @ grad_u - grad_u.T @ u)
  from_v = inverse_gap * (v.T @ grad_v - grad_v.T @ v)
  core = from_u * s[None, :] + jnp.diag(grad_s) + s[:, None] * from_v
  grad = u @ core @ vh
  # The parts of the vectors' gradients outside their spans (rectangular x).
  grad = grad + ((grad_u - u @ (u.T @ grad_u)) * inverse_s[None, :]) @ vh
  grad = grad + (u * inverse_s[None, :]) @ (grad_v.T - (grad_v.T @ v) @ vh)
  return (grad,)


_svd.defvjp(_svd_forward, _svd_backward)


def _bounded_inverse(x: jax.Array, delta: jax.Array) -> jax.Array:
  """`1/x` where `|x| > delta`, else `x / delta^2` (0 at 0, at most `1/delta`)."""
  wide = jnp.abs(x) > delta
  return jnp.where(wide, 1.0 / jnp.where(wide, x, 1.0), x / delta**2)


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """`sqrt(max(x, 0))` with gradient 0 where `x <= 0` (not NaN)."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def subspace_distance(source: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(RSD, BMP)` of two equal-sized batches of features:

      U_s, U_t = left singular vectors of f_s^T, f_t^T   (D x n, reduced SVD)
      U_s^T U_t = P_s diag(cos theta) P_t^T             (SVD: principal angles)
      RSD = sum_i sin theta_i = sum_i sqrt(1 - cos^2 theta_i)
      BMP = || |P_s| - |P_t| ||_F                         (base mismatch penalty)

  TLlib takes `torch.svd` three times, as here (reduced SVDs; the gradients
  flow through all three). Absolute values make BMP blind to the signs SVD
  leaves free. Two guards keep the gradient finite where TLlib's is not,
  without changing a value: where rounding makes a cosine exceed 1 (TLlib's
  square root returns NaN) the sine is 0, and the SVDs' gradients are
  regularised at repeated singular values (`_svd`), which RSD's cosines reach
  within a few steps of training.

  Args:
    source: `(n, *)` source features (TLlib: the bottleneck's, after its ReLU).
    target: `(n, *)` target features.
  """
  source, target = as_float_matrix(source), as_float_matrix(target)
  if source.shape != target.shape:
    raise ValueError(f"RSD compares batches of one shape; got {source.shape} and "
                     f"{target.shape}")
  source_basis = _svd(source.T)[0]
  target_basis = _svd(target.T)[0]
  source_rotation, cosines, target_rotation_t = _svd(source_basis.T @ target_basis)
  sines = _safe_sqrt(1.0 - cosines**2)
  distance = jnp.sum(jnp.abs(sines))
  mismatch = jnp.sqrt(jnp.sum((jnp.abs(source_rotation) - jnp.abs(target_rotation_t.T))**2))
  return distance, mismatch


def rsd(source: jax.Array, target: jax.Array, *, trade_off: float = 0.1) -> jax.Array:
  """`RSD + trade_off * BMP` (`subspace_distance`; TLlib's `trade_off_bmp`, 0.1)."""
  distance, mismatch = subspace_distance(source, target)
  return distance + trade_off * mismatch


__all__ = ["subspace_distance", "rsd"]
