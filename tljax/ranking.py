"""Transferability scores: which pretrained model to start from.

Each score rates a pretrained model for a labelled target task from one forward
pass over the target data, without fine-tuning: from its features (LogME,
H-score) or from its source-label predictions (LEEP, NCE). A higher score
predicts a better fine-tuned accuracy. The definitions follow TLlib's
`tllib.ranking` (the numbers match its float64 numpy code); where a formula
leaves a case undefined (an unpredicted source class, a singular covariance),
the docstring says what is returned.

Every score is one jitted call on arrays (iterations are `lax` loops) and
returns a scalar in the inputs' float dtype (float32 by default, float64 under
`jax_enable_x64` with float64 inputs). Class counts are static arguments: TLlib
takes `max(labels) + 1`, which is a data-dependent shape under `jit`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float, as_float_matrix

_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

# TLlib's LogME fixed point: at most 11 updates, stop when lambda = alpha / beta
# moves by less than 1%.
LOGME_MAX_ITERATIONS = 11
LOGME_TOLERANCE = 0.01

# TLlib's H-score: np.linalg.pinv(cov(f), rcond=1e-15).
HSCORE_RCOND = 1e-15


# ----------------------------------------------------------------------------
# LogME.
# ----------------------------------------------------------------------------


def _log_maximum_evidence(features: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the columns of `targets` of the maximised log evidence per sample.

  Works in the basis of the thin SVD `F = U diag(sigma) V^T` (`k = min(N, D)`
  singular values, `s = sigma^2`, the eigenvalues of `F^T F`; the other
  `D - k` eigenvalues are 0). With `p = U^T y`, the posterior mean is
  `m = V (beta sigma p / (alpha + beta s))`, so

      |m|^2       = sum_k s_k p_k^2 beta^2 / (alpha + beta s_k)^2
      |y - F m|^2 = |y - U p|^2 + sum_k p_k^2 alpha^2 / (alpha + beta s_k)^2

  and every update is `O(k)` per column, for all columns at once.
  """
  n, d = features.shape
  dtype = features.dtype
  u, sigma, _ = jnp.linalg.svd(features, full_matrices=False)
  s = sigma**2                                              # (k,)
  projections = _matmul(u.T, targets)                       # (k, C)
  squared_projections = projections**2
  # |y - U p|^2 from the residual itself: |y|^2 - |p|^2 cancels
  # catastrophically when y lies nearly in the span of U. When N <= D, U is
  # square and orthogonal, and the residual is exactly 0.
  if s.shape[0] == n:
    outside = jnp.zeros((targets.shape[1],), dtype)
  else:
    outside = jnp.sum((targets - _matmul(u, projections))**2, axis=0)
  num_zero_eigenvalues = d - s.shape[0]

  def update(alpha, beta):
    lam = alpha / beta
    gamma = jnp.sum(s[:, None] / (s[:, None] + lam), axis=0)
    denominator = (alpha + beta * s[:, None])**2
    alpha_de = jnp.sum(s[:, None] * squared_projections * beta**2 / denominator, axis=0)
    beta_de = outside + jnp.sum(squared_projections * alpha**2 / denominator, axis=0)
    return gamma / alpha_de, (n - gamma) / beta_de, alpha_de, beta_de

  def body(_, state):
    alpha, beta, alpha_de, beta_de, done = state
    new_alpha, new_beta, new_alpha_de, new_beta_de = update(alpha, beta)
    lam = alpha / beta
    converged = jnp.abs(new_alpha / new_beta - lam) / lam < LOGME_TOLERANCE
    # TLlib keeps the alpha and beta of the update that converged.
    keep = lambda old, new: jnp.where(done, old, new)  # noqa: E731
    return (keep(alpha, new_alpha), keep(beta, new_beta), keep(alpha_de, new_alpha_de),
            keep(beta_de, new_beta_de), done | converged)

  num_columns = targets.shape[1]
  ones = jnp.ones((num_columns,), dtype)
  state = (ones, ones, ones, ones, jnp.zeros((num_columns,), bool))
  alpha, beta, alpha_de, beta_de, _ = jax.lax.fori_loop(0, LOGME_MAX_ITERATIONS, body, state)

  log_det = (jnp.sum(jnp.log(alpha + beta * s[:, None]), axis=0)
             + num_zero_eigenvalues * jnp.log(alpha))
  evidence = (d / 2 * jnp.log(alpha) + n / 2 * jnp.log(beta) - log_det / 2
              - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * math.log(2 * math.pi))
  return jnp.mean(evidence / n)


@functools.partial(jax.jit, static_argnames="num_classes")
def logme(features: jax.Array, labels: jax.Array, *, num_classes: int) -> jax.Array:
  """LogME: mean log maximum evidence of Bayesian linear models on `features`.

  You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021; TLlib's `log_maximum_evidence`. For each class `c`,
  with `y = 1[labels == c]` regressed on the `(N, D)` features `F` under the
  prior `w ~ N(0, alpha^-1 I)` and noise `N(0, beta^-1)`:

      log p(y | F, alpha, beta) / N = [ D/2 log alpha + N/2 log beta
          - 1/2 log det(alpha I + beta F^T F) - beta/2 |y - F m|^2
          - alpha/2 |m|^2 - N/2 log 2 pi ] / N,
      m = beta (alpha I + beta F^T F)^-1 F^T y,

  maximised over `alpha, beta` by the fixed point (from `alpha = beta = 1`)

      gamma = sum_i s_i / (s_i + alpha / beta),   s = eig(F^T F),
      alpha <- gamma / |m|^2,   beta <- (N - gamma) / |y - F m|^2,

  stopped as TLlib does: after the update where `lambda = alpha / beta` moves
  by less than 1% relative (or after 11 updates), with `m` from the `alpha,
  beta` before that update. The score is the mean over the `num_classes`
  classes. A class without examples has `m = 0` and an infinite `alpha`
  (TLlib: inf or nan as well); pass the number of classes present.

  Args:
    features: `(N, D)` (or `(N, *)`) features of the model to rate on the
      target data.
    labels: `(N,)` integer target labels in `[0, num_classes)`.
    num_classes: `C_t`; TLlib's `max(labels) + 1`.

  Returns:
    Scalar score, higher is better.
  """
  features = as_float_matrix(features)
  targets = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  return _log_maximum_evidence(features, targets)


@jax.jit
def logme_regression(features: jax.Array, targets: jax.Array) -> jax.Array:
  """LogME for real-valued targets (TLlib's `regression=True`).

  The evidence of `logme` with each column of `targets` as `y`, averaged over
  the columns.

  Args:
    features: `(N, D)` features.
    targets: `(N,)` or `(N, K)` regression targets.
  """
  features = as_float_matrix(features)
  targets = as_float(targets).astype(features.dtype)
  return _log_maximum_evidence(features, targets.reshape(targets.shape[0], -1))


# ----------------------------------------------------------------------------
# LEEP and NCE.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="num_classes")
def leep(predictions: jax.Array, labels: jax.Array, *, num_classes: int) -> jax.Array:
  """LEEP: log expected empirical prediction.

  Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020; TLlib's `log_expected_empirical_prediction`.
  With `theta_i` the source model's softmax over its `C_s` source classes on
  target example `i` and `y_i` its target label:

      P(y, z) = 1/N sum_{i: y_i = y} theta_iz,   P(y | z) = P(y, z) / sum_y P(y, z),
      LEEP = 1/N sum_i log sum_z P(y_i | z) theta_iz.

  A source class that receives no probability mass at all (only possible with
  exact zeros, e.g. one-hot predictions) has `P(. | z) = 0 / 0`; it is set to 0
  (TLlib: nan), which is the limit, since `theta_iz = 0` for every `i` then.
  With one-hot predictions `theta_i = e_{z_i}`, LEEP is the mean
  log-likelihood `1/N sum_i log P(y_i | z_i)`, i.e. `nce`.

  Args:
    predictions: `(N, C_s)` source-class probabilities on the target data.
    labels: `(N,)` integer target labels in `[0, num_classes)`.
    num_classes: `C_t`.

  Returns:
    Scalar score (a log-likelihood, <= 0), higher is better.
  """
  predictions = as_float_matrix(predictions)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=predictions.dtype)
  joint = _matmul(one_hot.T, predictions) / predictions.shape[0]   # (C_t, C_s)
  marginal = jnp.sum(joint, axis=0)
  conditional = joint / jnp.where(marginal > 0, marginal, 1.0)     # P(y | z)
  likelihood = jnp.sum(predictions * conditional[labels], axis=1)
  return jnp.mean(jnp.log(likelihood))


@functools.partial(jax.jit, static_argnames=("num_classes", "num_source_classes"))
def nce(source_predictions: jax.Array,
        labels: jax.Array,
        *,
        num_classes: int,
        num_source_classes: int | None = None) -> jax.Array:
  """NCE: negative conditional entropy of the target labels given the source ones.

  Tran et al., "Transferability and Hardness of Supervised Classification
  Tasks", ICCV 2019; TLlib's `negative_conditional_entropy`. With `z_i` the
  source model's predicted source label (argmax) and `y_i` the target label,
  from the empirical joint `P(y, z)`:

      NCE = -H(Y | Z) = sum_{y, z} P(y, z) log (P(y, z) / P(z)).

  Pairs with `P(y, z) = 0` contribute 0 (TLlib adds `1e-20` inside the log,
  which shifts the value by less than `1e-17`). NCE is 0 when the target
  label is a function of the source label and `-log C_t` at worst.

  Args:
    source_predictions: `(N, C_s)` source-class scores (probabilities or
      logits; only their argmax is used) or `(N,)` integer source labels.
    labels: `(N,)` integer target labels in `[0, num_classes)`.
    num_classes: `C_t`.
    num_source_classes: `C_s`, needed for integer source labels.

  Returns:
    Scalar score, <= 0, higher is better.
  """
  source_predictions = jnp.asarray(source_predictions)
  if source_predictions.ndim == 2:
    num_source_classes = source_predictions.shape[1]
    source_labels = jnp.argmax(source_predictions, axis=1)
    dtype = jnp.promote_types(source_predictions.dtype, jnp.float32)
  elif num_source_classes is None:
    raise ValueError("integer source labels need num_source_classes")
  else:
    source_labels = source_predictions
    dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
  n = source_labels.shape[0]
  counts = jnp.zeros((num_classes, num_source_classes), dtype).at[labels, source_labels].add(1.0)
  source_counts = jnp.sum(counts, axis=0)
  safe = lambda x: jnp.where(x > 0, x, 1.0)  # noqa: E731
  terms = counts * jnp.log(safe(counts) / safe(source_counts))
  return jnp.sum(terms) / n


# ----------------------------------------------------------------------------
# H-score.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="num_classes")
def h_score(features: jax.Array,
            labels: jax.Array,
            *,
            num_classes: int,
            rcond: float | None = None) -> jax.Array:
  """H-score: `tr(cov(f)^+ cov(E[f | y]))`.

  Bao et al., "An Information-theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019; TLlib's `h_score`, with its pseudo-inverse
  `pinv(cov(f), rcond)` (singular values of `cov(f)` at most `rcond` times the
  largest are dropped) and `n - 1` covariances. Computed without forming
  `cov(f)`: with the thin SVD of the centred features `F - mean = U S V^T`,
  `cov(f)^+ = (N - 1) V S^-2 V^T` on the kept directions and
  `cov(E[f | y]) = 1/(N - 1) sum_c n_c (mu_c - mu)(mu_c - mu)^T`, so

      H = sum_c |sum_{i: y_i = c} U_i|^2 / n_c     (kept columns of U),

  the between-class sum of squares of the whitened features: invariant to any
  invertible affine map of the features, at most `min(C_t - 1, rank)`.

  Args:
    features: `(N, D)` features of the model to rate on the target data.
    labels: `(N,)` integer target labels in `[0, num_classes)`; classes
      without examples contribute nothing (as in TLlib).
    num_classes: `C_t`.
    rcond: relative cutoff on the eigenvalues of `cov(f)`. None: TLlib's
      `1e-15`, raised to `(max(N, D) eps)^2` when the dtype cannot resolve it
      (float32: `eps = 1.2e-7`), i.e. numpy's `matrix_rank` tolerance on the
      singular values of the centred features; below it, eigenvalues are
      rounding noise and inverting them would dominate the score.

  Returns:
    Scalar score, higher is better.
  """
  features = as_float_matrix(features)
  n, d = features.shape
  centred = features - jnp.mean(features, axis=0)
  u, sigma, _ = jnp.linalg.svd(centred, full_matrices=False)
  if rcond is None:
    rcond = max(HSCORE_RCOND, (max(n, d) * float(jnp.finfo(features.dtype).eps))**2)
  kept = sigma**2 > rcond * jnp.max(sigma)**2
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  class_sums = _matmul(one_hot.T, u * kept)                  # (C, k)
  class_counts = jnp.sum(one_hot, axis=0)
  per_class = jnp.sum(class_sums**2, axis=1) / jnp.where(class_counts > 0, class_counts, 1.0)
  return jnp.sum(per_class)


__all__ = [
    "LOGME_MAX_ITERATIONS", "LOGME_TOLERANCE", "HSCORE_RCOND",
    "logme", "logme_regression", "leep", "nce", "h_score",
]
