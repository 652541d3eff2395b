"""Numeric building blocks shared by the shallow adaptation methods.

Everything here is a pure JAX function of arrays (jit-able, no host
round-trips). `methods.py` composes these into TCA/JDA/BDA/CORAL/SA/GFK and
`estimators.py` wraps those in scikit-learn style classes.

Layout: samples are rows, `(num_samples, num_features)`, everywhere.

Precision: arrays are float32 unless `jax_enable_x64` is on, in which case they
are float64 (`float_dtype()`). Every matrix product goes through `matmul`,
which asks for full float32 precision: on recent GPUs the default lets XLA use
TF32 (10-bit mantissa), which is far too coarse for forming the scatter
matrices that the eigen-solvers below consume.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

KERNELS = ("primal", "linear", "rbf")

matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def float_dtype() -> np.dtype:
  """float64 when `jax_enable_x64` is on, float32 otherwise."""
  return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def as_float_array(x) -> np.ndarray:
  """A host array in `float_dtype()`, 2-D `(num_samples, num_features)`."""
  x = np.asarray(x, dtype=float_dtype())
  if x.ndim != 2:
    raise ValueError(f"expected a 2-D (samples, features) array, got {x.shape}")
  return x


def tiny(dtype) -> float:
  """A floor for norms and eigenvalues: far below signal, far above underflow."""
  return float(np.sqrt(np.finfo(dtype).tiny))


def normalize_rows(x: jax.Array) -> jax.Array:
  """Scales each row to unit L2 norm (all-zero rows stay zero)."""
  norms = jnp.linalg.norm(x, axis=1, keepdims=True)
  return x / jnp.maximum(norms, tiny(x.dtype))


def pairwise_squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """`D_ij = ||x_i - y_j||^2` from one matrix product, clamped at 0.

  `||x||^2 + ||y||^2 - 2 x.y` can round to a tiny negative number for
  (near-)identical rows; the clamp keeps `exp(-gamma D)` at most 1.
  """
  x_sq = jnp.sum(x * x, axis=1)[:, None]
  y_sq = jnp.sum(y * y, axis=1)[None, :]
  return jnp.maximum(x_sq + y_sq - 2 * matmul(x, y.T), 0)


def kernel_matrix(x: jax.Array, y: jax.Array, *, kernel: str, gamma) -> jax.Array:
  """`K_ij = k(x_i, y_j)` for the 'linear' (`x.y`) or 'rbf' kernel.

  The RBF kernel is `exp(-gamma ||x - y||^2)`, as sklearn's `rbf_kernel` and
  the reference TCA/JDA/BDA code (which feed it unit-norm samples, so the
  default `gamma=1` is on the scale of the data).
  """
  if kernel == "linear":
    return matmul(x, y.T)
  if kernel == "rbf":
    return jnp.exp(-gamma * pairwise_squared_distances(x, y))
  raise ValueError(f"unknown kernel {kernel!r}; expected 'linear' or 'rbf'")


def nearest_neighbor_predict(train_features: jax.Array, train_labels: jax.Array,
                             query_features: jax.Array) -> jax.Array:
  """Labels of each query's nearest (Euclidean) training sample: 1-NN.

  `argmin_j ||q - t_j||^2 = argmin_j (||t_j||^2 - 2 q.t_j)`: the query's own
  norm does not change the argmin, so one matrix product decides it.
  Ties go to the lowest index, like sklearn's brute-force search.
  """
  train_sq = jnp.sum(train_features * train_features, axis=1)
  scores = train_sq[None, :] - 2 * matmul(query_features, train_features.T)
  return train_labels[jnp.argmin(scores, axis=1)]


def _fix_column_signs(vectors: jax.Array) -> jax.Array:
  """Flips each column so its largest-magnitude entry is positive.

  Eigen/singular vectors are defined up to sign; a fixed convention makes
  results reproducible across backends. Nothing downstream depends on it.
  """
  rows = jnp.argmax(jnp.abs(vectors), axis=0)
  signs = jnp.sign(vectors[rows, jnp.arange(vectors.shape[1])])
  return vectors * jnp.where(signs == 0, 1, signs)


def leading_generalized_eigenvectors(numerator: jax.Array, denominator: jax.Array,
                                     count: int) -> tuple[jax.Array, jax.Array]:
  """Top-`count` solutions of `numerator v = s denominator v`.

  `numerator` is symmetric positive semi-definite, `denominator` symmetric
  positive definite. With the Cholesky factor `denominator = L L^T` the problem
  becomes the ordinary symmetric one `L^-1 numerator L^-T u = s u`,
  `v = L^-T u`, solved by `eigh`.

  Why this way round: TCA/JDA/BDA ask for the *smallest* `w` of
  `(K M K^T + lamb I) v = w (K H K^T) v`. There `K H K^T` is singular (the
  centring matrix `H` kills the all-ones vector, and with a kernel it is
  `n x n` of rank `< n`), so Cholesky of it fails and `solve(b, a)` is
  ill-posed; the QZ solver that the reference code calls (`scipy.linalg.eig`)
  copes, but it ignores the symmetry, may return complex round-off, and is one
  to two orders of magnitude slower than `eigh` (about 100x at 1024 x 1024 on
  a CPU). `K M K^T + lamb I` has
  every eigenvalue `>= lamb > 0`, so swapping the roles (`s = 1/w`, largest
  first) factors a well-conditioned matrix, keeps the problem symmetric
  (real eigenvalues, orthogonal `u`) and sends the reference's infinite `w` to
  harmless `s = 0`.

  Returns:
    `(values, vectors)`: `values` descending, shape `(count,)`; `vectors`
    `(dim, count)`, each column scaled to unit L2 norm (as `scipy.linalg.eig`
    returns them, so the embeddings `vectors^T K` are on the reference's scale).
  """
  cholesky = jnp.linalg.cholesky(denominator)
  half = solve_triangular(cholesky, numerator, lower=True)  # L^-1 N
  # (L^-1 N)^T = N L^-T because N is symmetric, so one more solve gives L^-1 N L^-T.
  reduced = solve_triangular(cholesky, half.T, lower=True)
  reduced = (reduced + reduced.T) / 2
  values, vectors = jnp.linalg.eigh(reduced)
  values = values[::-1][:count]
  top = vectors[:, ::-1][:, :count]
  directions = solve_triangular(cholesky.T, top, lower=False)
  directions = directions / jnp.linalg.norm(directions, axis=0, keepdims=True)
  return values, _fix_column_signs(directions)


def symmetric_matrix_power(matrix: jax.Array, power: float) -> jax.Array:
  """`matrix^power` for a symmetric positive definite matrix, via `eigh`.

  Eigenvalues are floored at a tiny positive number so round-off can never
  produce a negative base for a fractional power.
  """
  values, vectors = jnp.linalg.eigh((matrix + matrix.T) / 2)
  values = jnp.maximum(values, tiny(matrix.dtype))
  return matmul(vectors * values**power, vectors.T)


def covariance(x: jax.Array) -> jax.Array:
  """Unbiased sample covariance of the rows (`np.cov(x.T)`)."""
  centered = x - jnp.mean(x, axis=0, keepdims=True)
  return matmul(centered.T, centered) / (x.shape[0] - 1)


def pca_basis(x: jax.Array, dim: int) -> tuple[jax.Array, jax.Array]:
  """Mean and top-`dim` principal directions `(num_features, dim)` of the rows.

  Taken from the SVD of the centred data rather than `eigh` of the covariance:
  forming `X^T X` squares the condition number, which float32 cannot afford
  when the spectrum decays, as it does for deep features.
  """
  mean = jnp.mean(x, axis=0)
  _, _, right = jnp.linalg.svd(x - mean, full_matrices=False)
  return mean, _fix_column_signs(right[:dim].T)
