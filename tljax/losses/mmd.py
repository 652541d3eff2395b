"""Maximum mean discrepancy losses: MK-MMD (DAN), single-kernel MMD (DDC), and
DAN's kernel weights.

Long et al., "Learning Transferable Features with Deep Adaptation Networks",
ICML 2015; Gretton et al., "A Kernel Two-Sample Test", JMLR 2012 and "Optimal
kernel choice for large-scale two-sample tests", NIPS 2012.

The estimators are TLlib's `MultipleKernelMaximumMeanDiscrepancy` (and, through
`kernel_mmd`, its `JointMultipleKernelMaximumMeanDiscrepancy`). With `n` source
rows `s` and `n` target rows `t` and `k` the kernel (a sum of Gaussians, or a
product of such sums over layers for JMMD), TLlib weights the `(2n, 2n)` kernel
matrix of the concatenated batch by an "index matrix" and adds `2 / (n - 1)`:

quadratic (default): the unbiased U-statistic plus a constant

    1/(n(n-1)) sum_{i != j} [k(s_i, s_j) + k(t_i, t_j)]
      - 1/n^2 sum_{i,j} [k(s_i, t_j) + k(t_i, s_j)]  + 2/(n-1)

linear (`linear=True`): cyclic pairs `(i, i+1 mod n)`

    1/n sum_i [k(s_i, s_{i+1}) + k(t_i, t_{i+1})
               - k(s_i, t_{i+1}) - k(s_{i+1}, t_i)]  + 2/(n-1)

Both are unbiased estimates of `MMD^2 + 2/(n-1)` for a fixed kernel (the
linear one for `n > 2`, see below). TLlib adds
`2/(n-1)` in both modes; it is a constant (no gradient), independent of the
number of kernels, and does not make the estimate non-negative in general. For
`n = 2` TLlib's index matrix writes the two cross entries twice instead of
adding them, so its linear estimate halves the cross terms; that is reproduced.
This module computes the linear estimate from the `4n` needed kernel values
(TLlib evaluates the whole `(2n, 2n)` matrix); the adaptive bandwidth still
uses all pairs, through the O(n d) identity in `kernels.mean_squared_distance`.

The losses are the value the feature extractor minimises; `mk_mmd` is called on
bottleneck features (DAN adds it for the logits layer too in the paper, TLlib's
DAN example only for the bottleneck).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float_matrix
from tljax.losses.kernels import (GaussianKernel, gaussian_kernel,
                                  gaussian_kernel_sum, kernel_bank, kernel_sigma_squares,
                                  pairwise_squared_distances, rowwise_squared_distances)


def _quadratic_estimate(kernel_matrix: jax.Array, n: int) -> jax.Array:
  """TLlib's non-linear index matrix applied to a `(2n, 2n)` kernel matrix."""
  source_block, target_block = kernel_matrix[:n, :n], kernel_matrix[n:, n:]
  within = (jnp.sum(source_block) - jnp.trace(source_block)
            + jnp.sum(target_block) - jnp.trace(target_block))
  between = jnp.sum(kernel_matrix[:n, n:]) + jnp.sum(kernel_matrix[n:, :n])
  return within / (n * (n - 1)) - between / n**2 + 2.0 / (n - 1)


def _linear_estimate(pair_kernels: jax.Array, n: int) -> jax.Array:
  """TLlib's linear index matrix applied to kernel values of the cyclic pairs.

  Args:
    pair_kernels: `(4, n)`: `k(s_i, s_{i+1})`, `k(t_i, t_{i+1})`,
      `k(s_i, t_{i+1})`, `k(s_{i+1}, t_i)`.
    n: batch size per domain.
  """
  # For n = 2 the pairs (s_0, t_1) and (s_1, t_0) come up twice and TLlib's
  # index matrix assigns -1/n to them rather than accumulating -2/n.
  cross_weight = 0.5 if n == 2 else 1.0
  within = jnp.sum(pair_kernels[0]) + jnp.sum(pair_kernels[1])
  between = jnp.sum(pair_kernels[2]) + jnp.sum(pair_kernels[3])
  return (within - cross_weight * between) / n + 2.0 / (n - 1)


def kernel_mmd(source_layers: Sequence[jax.Array],
               target_layers: Sequence[jax.Array],
               layer_kernels: Sequence[Sequence[GaussianKernel]],
               *,
               linear: bool = False,
               kernel_weights: Sequence[jax.Array | None] | None = None) -> jax.Array:
  """TLlib's (joint) MMD estimate for the kernel `prod_l sum_u w_lu k_lu`.

  The common engine of `mk_mmd` (one layer) and `jmmd` (several layers). Each
  layer's adaptive bandwidths come from that layer's concatenated
  source + target batch. See the module docstring for the two estimators.

  Args:
    source_layers: per layer, `(n, *)` source activations.
    target_layers: per layer, `(n, *)` target activations (same `n`).
    layer_kernels: per layer, the Gaussian kernels summed on that layer.
    linear: the linear-time estimator instead of the quadratic one.
    kernel_weights: per layer, None (every kernel weight 1, TLlib) or one weight
      per kernel of that layer.

  Returns:
    Scalar estimate of `MMD^2 + 2/(n-1)`.
  """
  num_layers = len(layer_kernels)
  if not len(source_layers) == len(target_layers) == num_layers:
    raise ValueError(
        f"got {len(source_layers)} source layers, {len(target_layers)} target "
        f"layers and {num_layers} kernel groups; they must match")
  if kernel_weights is None:
    kernel_weights = (None,) * num_layers
  n = jnp.shape(source_layers[0])[0]
  if n < 2:
    raise ValueError(f"MMD needs at least 2 samples per domain, got {n}")

  product = None
  for source, target, kernels, weights in zip(source_layers, target_layers,
                                              layer_kernels, kernel_weights):
    source, target = as_float_matrix(source), as_float_matrix(target)
    if source.shape[0] != n or target.shape[0] != n:
      raise ValueError(
          f"TLlib's estimator needs n source and n target rows in every layer; "
          f"got {source.shape[0]} and {target.shape[0]} for n = {n}")
    features = jnp.concatenate([source, target], axis=0)
    bandwidths = kernel_sigma_squares(features, tuple(kernels))
    if linear:
      source_next = jnp.roll(source, -1, axis=0)
      target_next = jnp.roll(target, -1, axis=0)
      distances = jnp.stack([
          rowwise_squared_distances(source, source_next),
          rowwise_squared_distances(target, target_next),
          rowwise_squared_distances(source, target_next),
          rowwise_squared_distances(source_next, target),
      ])
    else:
      distances = pairwise_squared_distances(features)
    layer_kernel = gaussian_kernel_sum(distances, bandwidths, weights)
    product = layer_kernel if product is None else product * layer_kernel

  return _linear_estimate(product, n) if linear else _quadratic_estimate(product, n)


def mk_mmd(source: jax.Array,
           target: jax.Array,
           *,
           alphas: Sequence[float],
           linear: bool = False,
           kernel_weights: jax.Array | Sequence[float] | None = None) -> jax.Array:
  """Multi-kernel MMD of DAN (Long et al., ICML 2015), TLlib's estimator.

      k = sum_u beta_u k_u,   k_u(x, y) = exp(-||x - y||^2 / (2 alpha_u m)),

  with `m` the mean squared distance of the concatenated batch (no gradient).
  The estimate is TLlib's `MultipleKernelMaximumMeanDiscrepancy` (see the
  module docstring): the unbiased U-statistic (or TLlib's linear-time version
  with cyclic pairs) plus `2/(n-1)`.

  Args:
    source: `(n, *)` source activations.
    target: `(n, *)` target activations.
    alphas: bandwidth multipliers (TLlib's DAN: `2^k, k = -3..1`).
    linear: the linear-time estimator.
    kernel_weights: `beta`, one weight per alpha, e.g. from
      `dan_kernel_weights`. None sums the kernels with weight 1 each, as TLlib
      does; DAN's `beta` sums to 1 instead, which divides the MMD part by the
      number of kernels (the `2/(n-1)` stays).

  Returns:
    Scalar loss.
  """
  return kernel_mmd([source], [target], [kernel_bank(alphas)], linear=linear,
                    kernel_weights=[kernel_weights])


def mmd(source: jax.Array,
        target: jax.Array,
        *,
        sigma: float | None = None,
        alpha: float = 1.0,
        linear: bool = False) -> jax.Array:
  """Single-Gaussian-kernel MMD: `mk_mmd` with one kernel (DDC-style).

  Tzeng et al., "Deep Domain Confusion", 2014, penalise the MMD between source
  and target representations; this is the one-kernel Gaussian version of that
  penalty with TLlib's estimator (the DDC paper itself uses the distance of the
  mean representations, i.e. a linear kernel).

  Args:
    source: `(n, *)` source activations.
    target: `(n, *)` target activations.
    sigma: fixed bandwidth; None for the adaptive `sigma^2 = alpha * mean
      squared distance`.
    alpha: multiplier of the adaptive bandwidth.
    linear: the linear-time estimator.
  """
  kernel = GaussianKernel(alpha=float(alpha), sigma=sigma)
  return kernel_mmd([source], [target], [(kernel,)], linear=linear)


def linear_time_h_statistics(source: jax.Array,
                             target: jax.Array,
                             kernels: Sequence[GaussianKernel]) -> jax.Array:
  """Per-kernel h-statistics on disjoint quad-tuples (DAN Eq. 5, Gretton 2012).

      z_i = (s_{2i}, s_{2i+1}, t_{2i}, t_{2i+1}),
      h_u(z_i) = k_u(s_{2i}, s_{2i+1}) + k_u(t_{2i}, t_{2i+1})
                 - k_u(s_{2i}, t_{2i+1}) - k_u(s_{2i+1}, t_{2i})

  for `i < n // 2` (an odd last row is unused). Bandwidths are TLlib's, from
  the whole concatenated batch.

  Returns:
    `(num_kernels, n // 2)`.
  """
  source, target = as_float_matrix(source), as_float_matrix(target)
  bandwidths = kernel_sigma_squares(jnp.concatenate([source, target], axis=0), tuple(kernels))
  end = 2 * (source.shape[0] // 2)
  source_a, source_b = source[0:end:2], source[1:end:2]
  target_a, target_b = target[0:end:2], target[1:end:2]
  distances = jnp.stack([
      rowwise_squared_distances(source_a, source_b),
      rowwise_squared_distances(target_a, target_b),
      rowwise_squared_distances(source_a, target_b),
      rowwise_squared_distances(source_b, target_a),
  ])
  statistics = []
  for bandwidth in bandwidths:
    values = gaussian_kernel(distances, bandwidth)
    statistics.append(values[0] + values[1] - values[2] - values[3])
  return jnp.stack(statistics)


def max_test_power_weights(mmd_estimates: jax.Array,
                           h_covariance: jax.Array,
                           *,
                           eps: float = 1e-3) -> jax.Array:
  """Solves DAN's kernel-weight QP exactly and returns `beta / sum(beta)`.

      min_beta  beta^T (Q + eps I) beta   s.t.  d^T beta = 1,  beta >= 0.

  The QP is strictly convex, so its minimiser solves the equality-constrained
  problem restricted to its own support `S`:
  `beta_S = A_S^-1 d_S / (d_S^T A_S^-1 d_S)` with objective
  `1 / (d_S^T A_S^-1 d_S)`. Every support gives a feasible point when that
  `beta_S >= 0`, so the minimiser is the feasible one with the largest
  `d_S^T A_S^-1 d_S`. All `2^m - 1` supports are solved at once (vmapped
  `m x m` solves): exact and jittable for the handful of kernels DAN uses.

  When no entry of `d` is positive, no `beta >= 0` meets `d^T beta = 1`; the
  uniform weights `1/m` are returned then.

  Args:
    mmd_estimates: `d`, `(m,)`, one MMD estimate per kernel.
    h_covariance: `Q`, `(m, m)`, covariance of the per-kernel h-statistics.
    eps: ridge added to `Q` (DAN's epsilon).

  Returns:
    `(m,)` weights, `>= 0`, summing to 1.
  """
  d = jnp.asarray(mmd_estimates, jnp.float32)
  num_kernels = d.shape[0]
  if num_kernels > 12:
    raise ValueError(f"the exact solver enumerates 2^m supports; m = {num_kernels} is too many")
  regularised = jnp.asarray(h_covariance, jnp.float32) + eps * jnp.eye(num_kernels)
  supports = jnp.asarray(
      [mask for mask in itertools.product((0.0, 1.0), repeat=num_kernels) if any(mask)],
      jnp.float32)

  def solve_on_support(mask):
    # Identity rows outside the support keep the system non-singular and force
    # those coordinates to 0.
    restricted = regularised * jnp.outer(mask, mask) + jnp.diag(1.0 - mask)
    direction = jnp.linalg.solve(restricted, d * mask)
    power = jnp.dot(d, direction)
    beta = direction / jnp.where(power > 0, power, 1.0)
    tolerance = 1e-5 * jnp.max(jnp.abs(beta))
    feasible = (power > 0) & jnp.all(beta >= -tolerance)
    return beta, power, feasible

  betas, powers, feasible = jax.vmap(solve_on_support)(supports)
  best = jnp.argmax(jnp.where(feasible, powers, -jnp.inf))
  beta = jnp.maximum(betas[best], 0.0)
  beta = beta / jnp.sum(beta)
  uniform = jnp.full((num_kernels,), 1.0 / num_kernels)
  return jnp.where(jnp.any(feasible), beta, uniform)


def dan_kernel_weights(source: jax.Array,
                       target: jax.Array,
                       *,
                       alphas: Sequence[float],
                       eps: float = 1e-3) -> jax.Array:
  """DAN's kernel weights `beta`: the combination of maximal test power.

  Long et al. 2015, Sec. 3 (after Gretton et al. 2012): with `h_u` the
  linear-time h-statistics of kernel `u` on disjoint quad-tuples (see
  `linear_time_h_statistics`), `d_u = mean(h_u)` and `Q = cov(h)` (sample
  covariance, `n//2 - 1` degrees of freedom),

      beta = argmin beta^T (Q + eps I) beta  s.t.  d^T beta = 1, beta >= 0,

  rescaled to sum to 1 (the scale of `beta` only rescales the loss). DAN
  alternates this step with training the network at fixed `beta`, so no
  gradient flows through the result.

  Args:
    source: `(n, *)` source activations, `n >= 4`.
    target: `(n, *)` target activations.
    alphas: the kernel bank, as in `mk_mmd`.
    eps: ridge on `Q`.

  Returns:
    `(len(alphas),)` weights for `mk_mmd(..., kernel_weights=beta)`.
  """
  if jnp.shape(source)[0] < 4:
    raise ValueError("dan_kernel_weights needs n >= 4 (two quad-tuples for a covariance)")
  source, target = jax.lax.stop_gradient((source, target))
  statistics = linear_time_h_statistics(source, target, kernel_bank(alphas))
  mean = jnp.mean(statistics, axis=1)
  centred = statistics - mean[:, None]
  covariance = jnp.matmul(centred, centred.T, precision=jax.lax.Precision.HIGHEST)
  covariance = covariance / (statistics.shape[1] - 1)
  return max_test_power_weights(mean, covariance, eps=eps)


__all__ = [
    "kernel_mmd", "mk_mmd", "mmd", "linear_time_h_statistics",
    "max_test_power_weights", "dan_kernel_weights",
]
