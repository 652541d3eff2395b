"""Gaussian kernels for the kernel two-sample losses (MK-MMD, JMMD, DAN weights).

A kernel here is `k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`. Its bandwidth is
either fixed (`GaussianKernel(sigma=0.92)`) or, as in TLlib's `GaussianKernel`
with `track_running_stats=True`, set from the batch itself:

    sigma^2 = alpha * mean_{i,j} ||x_i - x_j||^2

over the concatenated source + target batch (all ordered pairs, diagonal
included), without gradient through the bandwidth (TLlib detaches the distances
before taking the mean). DAN's default bank is `alpha = 2^k, k = -3..1`.

Every function takes squared distances that were computed once, so a bank of
kernels costs one distance matrix, not one per kernel.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float_matrix

class GaussianKernel(NamedTuple):
  """One Gaussian kernel, with an adaptive or a fixed bandwidth.

  Attributes:
    alpha: with `sigma=None`, `sigma^2 = alpha * mean squared distance` of the
      batch (TLlib's `track_running_stats=True`).
    sigma: fixed bandwidth (TLlib's `track_running_stats=False`); `alpha` is
      then ignored.
  """

  alpha: float = 1.0
  sigma: float | None = None


def kernel_bank(alphas: Sequence[float]) -> tuple[GaussianKernel, ...]:
  """Adaptive-bandwidth Gaussian kernels, one per `alpha` (TLlib's DAN and JAN
  examples: `2^k, k = -3..1`)."""
  return tuple(GaussianKernel(alpha=float(alpha)) for alpha in alphas)


def pairwise_squared_distances(x: jax.Array) -> jax.Array:
  """`D_ij = ||x_i - x_j||^2` for the rows of `x`, via one Gram matrix.

  `D = diag(G) + diag(G)^T - 2 G` with `G = x x^T`, clamped at 0: no `(n, n, d)`
  temporary. Taking the norms from the diagonal of the same Gram matrix makes
  the distance between two identical rows exactly 0 (a separately computed
  `sum(x**2)` would round differently from the matmul).

  Args:
    x: `(n, d)`.

  Returns:
    `(n, n)` squared distances.
  """
  # HIGHEST: the subtraction cancels; TF32/bf16 matmul passes would leave
  # distance errors of the order of the squared norms.
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  norms = jnp.diagonal(gram)
  return jnp.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)


def rowwise_squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """`||x_i - y_i||^2` for matching rows of `x` and `y` (both `(n, d)`)."""
  return jnp.sum(jnp.square(x - y), axis=-1)


def mean_squared_distance(x: jax.Array) -> jax.Array:
  """`mean_{i,j} ||x_i - x_j||^2` over all `n^2` ordered pairs of rows of `x`.

  This is the statistic TLlib's adaptive bandwidth averages. It equals
  `2 * mean_i ||x_i - mean(x)||^2`, which costs O(n d) and is computed from
  centred rows, so it does not cancel the way `E|x|^2 - |E x|^2` would.
  """
  centred = x - jnp.mean(x, axis=0, keepdims=True)
  return 2.0 * jnp.mean(jnp.sum(jnp.square(centred), axis=-1))


def kernel_sigma_squares(features: jax.Array,
                  kernels: Sequence[GaussianKernel]) -> tuple[jax.Array, ...]:
  """The `sigma^2` of each kernel for a concatenated source + target batch.

  Adaptive bandwidths carry no gradient (TLlib detaches them). If every point
  of the batch coincides, the mean distance is 0 and TLlib divides 0 by 0; here
  `sigma^2` is floored at the smallest normal float, which makes every kernel
  value exactly 1 in that case and changes nothing otherwise.

  Args:
    features: `(2n, d)`, source rows then target rows.
    kernels: the kernels of one layer.

  Returns:
    One scalar `sigma^2` per kernel.
  """
  mean_distance = None
  result = []
  for kernel in kernels:
    if kernel.sigma is not None:
      result.append(jnp.asarray(kernel.sigma**2, features.dtype))
      continue
    if mean_distance is None:
      mean_distance = jax.lax.stop_gradient(mean_squared_distance(features))
    result.append(jnp.maximum(kernel.alpha * mean_distance, jnp.finfo(features.dtype).tiny))
  return tuple(result)


def gaussian_kernel(squared_distances: jax.Array, sigma_square: jax.Array | float) -> jax.Array:
  """`exp(-D / (2 sigma^2))` elementwise: a fixed-bandwidth Gaussian kernel."""
  return jnp.exp(-squared_distances / (2.0 * sigma_square))


def gaussian_kernel_sum(squared_distances: jax.Array,
                        sigma_squares: Sequence[jax.Array],
                        weights: jax.Array | Sequence[float] | None = None) -> jax.Array:
  """`sum_u w_u exp(-D / (2 sigma_u^2))`; equal weights 1 (TLlib's sum) by default.

  Args:
    squared_distances: any shape; reused for every kernel.
    sigma_squares: one bandwidth per kernel.
    weights: one weight per kernel, or None for weight 1 each.

  Returns:
    Array shaped like `squared_distances`.
  """
  total = jnp.zeros_like(squared_distances)
  for u, sigma_square in enumerate(sigma_squares):
    value = gaussian_kernel(squared_distances, sigma_square)
    total = total + (value if weights is None else weights[u] * value)
  return total


def gaussian_kernel_matrices(features: jax.Array,
                             kernels: Sequence[GaussianKernel] | None = None) -> jax.Array:
  """The kernel bank on one batch: `(num_kernels, N, N)` kernel matrices.

  Args:
    features: `(N, *)`, e.g. source and target rows concatenated (TLlib's
      convention: the bandwidth is then shared by both domains).
    kernels: default `kernel_bank()` (alphas `2^-3 .. 2^1`).

  Returns:
    `K[u, i, j] = exp(-||x_i - x_j||^2 / (2 sigma_u^2))`, one distance matrix
    shared by all kernels.
  """
  kernels = kernel_bank() if kernels is None else tuple(kernels)
  features = as_float_matrix(features)
  distances = pairwise_squared_distances(features)
  return jnp.stack([gaussian_kernel(distances, s) for s in kernel_sigma_squares(features, kernels)])
