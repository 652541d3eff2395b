"""Feature-level domain adaptation as pure, jitted JAX functions.

Each function maps source/target feature matrices (rows are samples) to the
parameters of a feature map; `estimators.py` wraps them in scikit-learn style
classes and `reference.py` holds independent numpy/scipy versions that the
tests compare against.

Methods:
  TCA   Pan et al., "Domain adaptation via transfer component analysis",
        IEEE TNN 2011.
  JDA   Long et al., "Transfer feature learning with joint distribution
        adaptation", ICCV 2013.
  BDA   Wang et al., "Balanced distribution adaptation for transfer learning",
        ICDM 2017.
  CORAL Sun et al., "Return of frustratingly easy domain adaptation", AAAI 2016.
  SA    Fernando et al., "Unsupervised visual domain adaptation using subspace
        alignment", ICCV 2013.
  GFK   Gong et al., "Geodesic flow kernel for unsupervised domain adaptation",
        CVPR 2012.

TCA, JDA and BDA share one solver. With the training samples unit-normalised
and stacked as the columns of `K` (`X` itself for the 'primal' kernel, the
`n x n` kernel matrix otherwise), the projection `A` holds the eigenvectors with
the smallest `w` of

    (K M K^T + lamb I) a = w K H K^T a,

where `H = I - 11^T/n` centres and `M` is the (Frobenius-normalised) MMD matrix:
`M0 = C e e^T` with `e = [1/n_s,...; -1/n_t,...]` for the marginal distributions,
plus one `e_c e_c^T` per class for the conditionals, with target classes taken
from 1-NN pseudo-labels of the previous iteration. JDA uses `M0 + sum_c M_c`,
BDA `(1 - mu) M0 + mu sum_c M_c`, TCA `M0` alone. The embedding is `A^T K`,
each sample rescaled to unit norm, as in the reference code.

`M` is never formed: it is `E D E^T` with `E` the `n x (C + 1)` matrix of the
vectors `e, e_1, ..., e_C` and `D` their weights, so `K M K^T = (K E) D (K E)^T`
and `||M||_F^2 = tr((D E^T E)^2)` cost `O(p n C)` instead of `O(p n^2)`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tljax.shallow import ops
from tljax.shallow.ops import matmul


class KernelProjection(NamedTuple):
  """The fitted map of TCA/JDA/BDA.

  Attributes:
    features: the unit-normalised training samples `(n_s + n_t, m)`, source
      first; a kernel projection needs them to embed new samples.
    projection: `A`, `(m, dim)` for the 'primal' kernel, `(n_s + n_t, dim)`
      otherwise; columns have unit L2 norm.
    embedding: `(n_s + n_t, dim)` embedded training samples, unit-norm rows.
    eigenvalues: `(dim,)` values `1/w` of the chosen directions, descending.
    pseudo_labels: `(iterations, n_t)` target pseudo-labels after each
      iteration (JDA/BDA; `(0, n_t)` for TCA).
  """

  features: jax.Array
  projection: jax.Array
  embedding: jax.Array
  eigenvalues: jax.Array
  pseudo_labels: jax.Array


class SubspaceAlignment(NamedTuple):
  """SA's maps: source `(x - source_mean) @ source_map`, target `(x - target_mean) @ target_basis`."""

  source_mean: jax.Array
  source_map: jax.Array
  target_mean: jax.Array
  target_basis: jax.Array


class GeodesicFlow(NamedTuple):
  """GFK's kernel `G = embedding_map @ embedding_map.T`, in factored form.

  Attributes:
    embedding_map: `(num_features, 2 dim)`; `x @ embedding_map` embeds samples
      so that Euclidean distances are the GFK distances
      `(x - y)^T G (x - y)`. Applied to raw features, as the reference does.
    principal_angles: `(dim,)` angles between the two PCA subspaces.
  """

  embedding_map: jax.Array
  principal_angles: jax.Array


# ---------------------------------------------------------------------------
# TCA / JDA / BDA
# ---------------------------------------------------------------------------


def _training_basis(source, target, kernel, gamma):
  """Unit-norm samples, the matrix `K` (columns = samples) and `K H K^T`."""
  if kernel not in ops.KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {ops.KERNELS}")
  features = ops.normalize_rows(jnp.concatenate([source, target], axis=0))
  if kernel == "primal":
    basis = features.T
  else:
    basis = ops.kernel_matrix(features, features, kernel=kernel, gamma=gamma)
  # K H K^T = (K H)(K H)^T since H is symmetric and idempotent; K H centres rows.
  centered = basis - jnp.mean(basis, axis=1, keepdims=True)
  return features, basis, matmul(centered, centered.T)


def _mmd_coefficients(source_onehot, target_onehot, marginal_weight, conditional_weight):
  """`E = [e, e_1..e_C]` `(n, C + 1)` and weights `D` with `M = E diag(D) E^T`.

  A class with no target pseudo-label keeps only its source part, as in the
  Matlab reference (`e(isinf(e)) = 0`).
  """
  num_source, num_classes = source_onehot.shape
  num_target = target_onehot.shape[0]
  dtype = source_onehot.dtype
  marginal = jnp.concatenate([jnp.full((num_source,), 1 / num_source, dtype),
                              jnp.full((num_target,), -1 / num_target, dtype)])
  source_counts = jnp.sum(source_onehot, axis=0)
  target_counts = jnp.sum(target_onehot, axis=0)
  conditional = jnp.concatenate([
      source_onehot / jnp.maximum(source_counts, 1),
      -target_onehot / jnp.maximum(target_counts, 1)], axis=0)
  coefficients = jnp.concatenate([marginal[:, None], conditional], axis=1)
  # M0 = C e e^T: the reference scales the marginal term by the number of
  # classes so it weighs as much as the C conditional terms together. (TCA has
  # no classes; its lone term is normalised away, so any positive scale works.)
  weights = jnp.concatenate([
      jnp.reshape(marginal_weight * max(num_classes, 1), (1,)).astype(dtype),
      jnp.full((num_classes,), conditional_weight, dtype)])
  return coefficients, weights


def _solve_projection(basis, scatter, coefficients, weights, dim, lamb):
  """Projection `A`, eigenvalues and unit-norm embedding for one MMD matrix."""
  basis_coefficients = matmul(basis, coefficients)  # K E
  weighted_gram = weights[:, None] * matmul(coefficients.T, coefficients)  # D E^T E
  frobenius = jnp.sqrt(jnp.sum(weighted_gram * weighted_gram.T))
  mmd_scatter = matmul(basis_coefficients * weights, basis_coefficients.T) / frobenius
  regularized = mmd_scatter + lamb * jnp.eye(basis.shape[0], dtype=basis.dtype)
  values, projection = ops.leading_generalized_eigenvectors(scatter, regularized, dim)
  embedding = ops.normalize_rows(matmul(basis.T, projection))
  return values, projection, embedding


def _check_dim(dim, basis_rows):
  if not 1 <= dim <= basis_rows:
    raise ValueError(
        f"dim={dim} must be between 1 and {basis_rows} (the number of features "
        "for the 'primal' kernel, of samples otherwise)")


@functools.partial(jax.jit, static_argnames=("dim", "kernel"))
def transfer_component_analysis(source, target, *, dim: int, lamb=1.0,
                                kernel: str = "primal", gamma=1.0) -> KernelProjection:
  """TCA: the `dim` directions that best trade marginal MMD against variance.

  Args:
    source: `(n_s, m)` source features.
    target: `(n_t, m)` target features.
    dim: number of transfer components.
    lamb: `lamb` of the trade-off `(K M K^T + lamb I)`; larger keeps more
      variance, smaller matches the means harder.
    kernel: 'primal' (linear map of the features, `m x m` problem), 'linear' or
      'rbf' (kernel map, `(n_s + n_t)^2` problem).
    gamma: RBF bandwidth, `exp(-gamma ||x - y||^2)` on unit-norm samples.

  Returns:
    The fitted `KernelProjection`; rows `[:n_s]` of its embedding are source.
  """
  features, basis, scatter = _training_basis(source, target, kernel, gamma)
  _check_dim(dim, basis.shape[0])
  source_onehot = jnp.zeros((source.shape[0], 0), source.dtype)
  target_onehot = jnp.zeros((target.shape[0], 0), source.dtype)
  coefficients, weights = _mmd_coefficients(source_onehot, target_onehot, 1.0, 0.0)
  values, projection, embedding = _solve_projection(
      basis, scatter, coefficients, weights, dim, lamb)
  no_labels = jnp.zeros((0, target.shape[0]), jnp.int32)
  return KernelProjection(features, projection, embedding, values, no_labels)


@functools.partial(jax.jit, static_argnames=("kernel",))
def joint_basis(source, target, *, kernel: str = "primal", gamma=1.0):
  """`(features, K, K H K^T)` for a JDA/BDA run whose iterations run on the host.

  Only `BDA(mu='auto')` needs this: its balance factor comes from sklearn
  classifiers between iterations. Fixed-weight runs use
  `joint_distribution_adaptation`, which loops on the device.
  """
  return _training_basis(source, target, kernel, gamma)


def _joint_iteration_impl(basis, scatter, source_labels, pseudo_labels,
                          marginal_weight, conditional_weight, num_classes, dim, lamb):
  dtype = basis.dtype
  num_source = source_labels.shape[0]
  source_onehot = jax.nn.one_hot(source_labels, num_classes, dtype=dtype)
  target_onehot = jax.nn.one_hot(pseudo_labels, num_classes, dtype=dtype)
  coefficients, weights = _mmd_coefficients(
      source_onehot, target_onehot, marginal_weight, conditional_weight)
  values, projection, embedding = _solve_projection(
      basis, scatter, coefficients, weights, dim, lamb)
  new_pseudo_labels = ops.nearest_neighbor_predict(
      embedding[:num_source], source_labels, embedding[num_source:])
  return values, projection, embedding, new_pseudo_labels


joint_iteration = jax.jit(
    _joint_iteration_impl, static_argnames=("num_classes", "dim"))
joint_iteration.__doc__ = """One JDA/BDA step on a precomputed `joint_basis`.

Builds `M = marginal_weight M0 + conditional_weight sum_c M_c` from the source
labels and the target pseudo-labels (integers in `[0, num_classes)`), solves for
the projection and relabels the target by 1-NN in the new embedding.

Returns:
  `(eigenvalues, projection, embedding, new_pseudo_labels)`.
"""


@functools.partial(
    jax.jit, static_argnames=("num_classes", "dim", "kernel", "iterations"))
def joint_distribution_adaptation(source, source_labels, target, *, num_classes: int,
                                  dim: int, lamb=1.0, kernel: str = "primal",
                                  gamma=1.0, iterations: int = 10,
                                  marginal_weight=1.0,
                                  conditional_weight=1.0) -> KernelProjection:
  """JDA/BDA: TCA plus class-conditional MMD terms with iterated pseudo-labels.

  The first iteration has no pseudo-labels and uses `M0` alone (it is TCA);
  each later one uses `marginal_weight M0 + conditional_weight sum_c M_c` with
  the target labelled by 1-NN from the previous iteration, as the reference
  code does. JDA is `(1, 1)`, BDA with balance factor `mu` is `(1 - mu, mu)`;
  since `M` is Frobenius-normalised, JDA equals BDA with `mu = 0.5`. The
  whole loop is one `lax.scan`, so it runs without host round-trips.

  Args:
    source: `(n_s, m)` source features.
    source_labels: `(n_s,)` integers in `[0, num_classes)`.
    target: `(n_t, m)` target features.
    num_classes: number of classes.
    dim, lamb, kernel, gamma: as in `transfer_component_analysis`.
    iterations: number of relabel-and-refit rounds (`T` in the reference).
    marginal_weight, conditional_weight: weights of `M0` and `sum_c M_c`.

  Returns:
    The `KernelProjection` of the last iteration, with every iteration's
    pseudo-labels.
  """
  features, basis, scatter = _training_basis(source, target, kernel, gamma)
  _check_dim(dim, basis.shape[0])
  dtype = basis.dtype

  def step(carry, iteration):
    pseudo_labels = carry[0]
    first = iteration == 0
    marginal = jnp.where(first, 1.0, marginal_weight).astype(dtype)
    conditional = jnp.where(first, 0.0, conditional_weight).astype(dtype)
    values, projection, embedding, pseudo_labels = _joint_iteration_impl(
        basis, scatter, source_labels, pseudo_labels, marginal, conditional,
        num_classes, dim, lamb)
    return (pseudo_labels, values, projection, embedding), pseudo_labels

  initial = (jnp.zeros((target.shape[0],), source_labels.dtype),
             jnp.zeros((dim,), dtype),
             jnp.zeros((basis.shape[0], dim), dtype),
             jnp.zeros((basis.shape[1], dim), dtype))
  (_, values, projection, embedding), history = jax.lax.scan(
      step, initial, jnp.arange(iterations))
  return KernelProjection(features, projection, embedding, values, history)


@functools.partial(jax.jit, static_argnames=("kernel",))
def kernel_project(x, features, projection, *, kernel: str, gamma=1.0):
  """Embeds new samples with a fitted TCA/JDA/BDA projection.

  Same steps as for the training samples: unit-normalise, kernel against the
  training `features` (nothing for 'primal'), project, unit-normalise.
  """
  x = ops.normalize_rows(x)
  if kernel != "primal":
    x = ops.kernel_matrix(x, features, kernel=kernel, gamma=gamma)
  return ops.normalize_rows(matmul(x, projection))


# ---------------------------------------------------------------------------
# CORAL
# ---------------------------------------------------------------------------


@jax.jit
def coral(source, target, lamb=1.0):
  """CORAL's linear map for the source: `(C_s + lamb I)^-1/2 (C_t + lamb I)^1/2`.

  Whitens the source covariance, then re-colours it with the target's; the
  target is left as it is. Sun et al. use `lamb = 1` ("add the identity"),
  which also keeps the inverse square root finite when `n < m`. Both powers
  come from `eigh` of a symmetric matrix whose eigenvalues are `>= lamb`.

  Returns:
    `(m, m)` matrix; adapted source features are `source @ matrix`.
  """
  eye = jnp.eye(source.shape[1], dtype=source.dtype)
  source_cov = ops.covariance(source) + lamb * eye
  target_cov = ops.covariance(target) + lamb * eye
  return matmul(ops.symmetric_matrix_power(source_cov, -0.5),
                ops.symmetric_matrix_power(target_cov, 0.5))


# ---------------------------------------------------------------------------
# Subspace alignment
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("dim",))
def subspace_alignment(source, target, *, dim: int) -> SubspaceAlignment:
  """SA: map the source PCA basis onto the target's with `M = P_s^T P_t`.

  Source samples go to `(x - mean_s) P_s M`, target samples to
  `(x - mean_t) P_t`, both `dim`-dimensional. Each domain is centred on its
  own mean, as PCA projection does (it also removes a pure offset between the
  domains).
  """
  source_mean, source_basis = ops.pca_basis(source, dim)
  target_mean, target_basis = ops.pca_basis(target, dim)
  alignment = matmul(source_basis.T, target_basis)
  return SubspaceAlignment(source_mean, matmul(source_basis, alignment),
                           target_mean, target_basis)


# ---------------------------------------------------------------------------
# Geodesic flow kernel
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("dim",))
def geodesic_flow_kernel(source, target, *, dim: int) -> GeodesicFlow:
  """GFK: integrate the projections along the Grassmann geodesic `P_s -> P_t`.

  With `P_s^T P_t = U_1 cos(theta) V^T` and
  `B = (I - P_s P_s^T) P_t V diag(1/sin(theta))`, the geodesic is
  `Phi(t) = P_s U_1 cos(t theta) + B sin(t theta)` (it ends at `P_t V`), and
  `G = int_0^1 Phi Phi^T dt = W S W^T` with `W = [P_s U_1, B]` and
  per-angle 2x2 blocks

      [[1/2 + sin(2 th)/(4 th),  sin(th)^2/(2 th)       ],
       [sin(th)^2/(2 th),        1/2 - sin(2 th)/(4 th)]],

  Gong et al.'s closed form (their `Lambda_1..3`, with `R_s U_2 = -B`). Unlike
  the reference we never build the `m x (m - dim)` complement of `P_s`: `B`
  comes from the residual of `P_t V` off `P_s`, whose column norms are
  `sin(theta)` exactly (more accurate than `sqrt(1 - cos^2)` for small
  angles); `theta = atan2(sin, cos)`. The `sin x / x` factors are written with
  `sinc`, so `theta = 0` (a shared direction, where `B`'s column is undefined
  but weighted by 0) needs no special case.

  `W` has orthonormal columns, so with `S = F F^T` the map `x -> x W F` gives
  Euclidean distances equal to the GFK distances; we return `W F`.
  """
  _, source_basis = ops.pca_basis(source, dim)
  _, target_basis = ops.pca_basis(target, dim)
  left, cosines, right_t = jnp.linalg.svd(matmul(source_basis.T, target_basis))
  target_rotated = matmul(target_basis, right_t.T)
  residual = target_rotated - matmul(source_basis, matmul(source_basis.T, target_rotated))
  sines = jnp.linalg.norm(residual, axis=0)
  angles = jnp.arctan2(sines, cosines)
  has_direction = sines > ops.tiny(sines.dtype)
  complement = jnp.where(has_direction, residual / jnp.where(has_direction, sines, 1), 0)
  stacked = jnp.concatenate([matmul(source_basis, left), complement], axis=1)

  sinc_double = jnp.sinc(2 * angles / jnp.pi)  # sin(2 th) / (2 th)
  start_weight = (1 + sinc_double) / 2
  cross_weight = jnp.sin(angles) * jnp.sinc(angles / jnp.pi) / 2  # sin^2 / (2 th)
  end_weight = (1 - sinc_double) / 2
  weights = jnp.block([[jnp.diag(start_weight), jnp.diag(cross_weight)],
                       [jnp.diag(cross_weight), jnp.diag(end_weight)]])
  # S is PSD by construction (each block is a Gram matrix of cos, sin on [0, 1]);
  # clamping only removes round-off below zero.
  values, vectors = jnp.linalg.eigh(weights)
  factor = vectors * jnp.sqrt(jnp.maximum(values, 0))
  return GeodesicFlow(matmul(stacked, factor), angles)
