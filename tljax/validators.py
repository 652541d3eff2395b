"""Unsupervised validators: scores that pick a checkpoint or hyper-parameter
without target labels.

At each evaluation the training loop has one pass of arrays: source
held-out logits, labels and features, target logits and features (and, for
the oracle only, target labels). Each validator is a pure jitted function of
those arrays returning a scalar; `VALIDATORS` records, per name, the function,
its direction (`higher_is_better`) and the arrays it reads, and `evaluate`
computes the ones whose inputs are present. After training, `select_steps`
picks each validator's step from the evaluation records and
`rank_correlations` says how well each validator ranks the records compared
with the target accuracy (`oracle`, computed by the evaluation loop).

Padded batches: every function takes a boolean `mask` (or one per domain)
marking the real rows; masked rows are ignored everywhere (means, neighbour
sets, the domain classifier's fit).

DEV and IWCV weight the source validation rows by a density ratio from a
logistic-regression domain classifier. In the table (one eval pass) it is
fitted on those same source validation features vs the target features; the
functions also take a separate fitting set (the DEV paper fits on source
training features), see `importance_weights`.

Validators:
  source_accuracy  accuracy on held-out source data                 higher
  target_entropy   mean prediction entropy on target                 lower
  snd              soft neighbourhood density of target softmax      higher
  snd_features     soft neighbourhood density of target features    higher
  bnm              nuclear norm of the target softmax matrix / n     higher
  dev              deep embedded validation risk                     lower
  iwcv             importance-weighted source risk                   lower
  oracle           target accuracy (needs labels; not computed here) higher
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from tljax.losses._arrays import as_float, as_float_matrix

_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

# Saito et al. 2021: temperature of the neighbourhood softmax.
SND_TEMPERATURE = 0.05
# Domain classifier of DEV / IWCV: L2 penalty on the weights of the
# standardised features (per mean log-loss; sklearn's C = 1 is 1 / n), and
# the Newton iteration budget.
DEFAULT_L2 = 1e-2
DEFAULT_NEWTON_ITERATIONS = 50
LOSSES = ("cross_entropy", "zero_one")


# ----------------------------------------------------------------------------
# Masked reductions.
# ----------------------------------------------------------------------------


def _row_mask(n: int, mask: jax.Array | None) -> jax.Array:
  return jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool).reshape(n)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over the rows where `mask`; `where`, not a product, so that values
  of padded rows (possibly nan) cannot leak in."""
  count = jnp.sum(mask).astype(values.dtype)
  return jnp.sum(jnp.where(mask, values, 0.0)) / count


def _l2_normalize(x: jax.Array) -> jax.Array:
  norms = jnp.linalg.norm(x, axis=1, keepdims=True)
  return x / jnp.maximum(norms, jnp.finfo(x.dtype).tiny**0.5)


# ----------------------------------------------------------------------------
# Accuracy, entropy, BNM.
# ----------------------------------------------------------------------------


@jax.jit
def source_accuracy(logits: jax.Array, labels: jax.Array, *,
                    mask: jax.Array | None = None) -> jax.Array:
  """`1/n sum_i 1[argmax_c logits_ic = y_i]` on held-out source data.

  Args:
    logits: `(n, C)` logits (or probabilities).
    labels: `(n,)` integer labels.
    mask: `(n,)` real rows.
  """
  logits = as_float_matrix(logits)
  correct = (jnp.argmax(logits, axis=1) == labels).astype(logits.dtype)
  return _masked_mean(correct, _row_mask(logits.shape[0], mask))


@jax.jit
def source_mae(predictions: jax.Array, targets: jax.Array, *,
               mask: jax.Array | None = None) -> jax.Array:
  """Mean absolute error of `(n, F)` regression predictions over held-out
  labelled rows (`mask` 1) and factors: the regression counterpart of
  `source_accuracy`, lower is better."""
  predictions, targets = as_float(predictions), as_float(targets)
  error = jnp.mean(jnp.abs(predictions - targets.reshape(predictions.shape)), axis=-1)
  return _masked_mean(error, _row_mask(error.shape[0], mask))


def target_entropy(logits: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """Mean prediction entropy `1/n sum_i -sum_c p_ic log p_ic`, `p = softmax(logits)`.

  Exact (from `log_softmax`, no epsilon). Lower is better: confident target
  predictions (Grandvalet & Bengio, NIPS 2004; as a validator e.g. Morerio et
  al., ICLR 2018).

  Args:
    logits: `(n, C)` target logits.
    mask: `(n,)` real rows.
  """
  logits = as_float_matrix(logits)
  log_probs = jax.nn.log_softmax(logits, axis=1)
  entropies = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=1)
  return _masked_mean(entropies, _row_mask(logits.shape[0], mask))


@jax.jit
def bnm_score(logits: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """`||softmax(logits)||_* / n`: nuclear norm of the `(n, C)` target prediction matrix.

  Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm
  Maximization under Label Insufficient Situations", CVPR 2020 (the BNM loss
  is minus this). Large when predictions are both confident and spread over
  many classes: at most `sqrt(min(n, C) / n)` (rows of L2 norm <= 1, rank <=
  min(n, C)), reached by one-hot rows spread evenly over the classes. Higher
  is better.

  Args:
    logits: `(n, C)` target logits.
    mask: `(n,)` real rows (padded rows are zeroed, which leaves the singular
      values of the real rows unchanged).
  """
  logits = as_float_matrix(logits)
  mask = _row_mask(logits.shape[0], mask)
  probs = jnp.where(mask[:, None], jax.nn.softmax(logits, axis=1), 0.0)
  singular_values = jnp.linalg.svd(probs, compute_uv=False)
  return jnp.sum(singular_values) / jnp.sum(mask).astype(logits.dtype)


# ----------------------------------------------------------------------------
# Soft neighbourhood density.
# ----------------------------------------------------------------------------


def _neighbourhood_entropies(queries, keys, query_rows, key_mask, temperature):
  """Entropy of `softmax_j(<q, k_j> / T)` over the real keys other than the query itself."""
  similarities = _matmul(queries, keys.T) / temperature             # (b, n)
  neighbours = key_mask[None, :] & (query_rows[:, None] != jnp.arange(keys.shape[0])[None, :])
  similarities = jnp.where(neighbours, similarities, -jnp.inf)
  log_probs = jax.nn.log_softmax(similarities, axis=1)
  return -jnp.sum(jnp.where(neighbours, jnp.exp(log_probs) * log_probs, 0.0), axis=1)


@functools.partial(jax.jit, static_argnames=("softmax", "block_size"))
def snd(values: jax.Array,
        *,
        temperature: float = SND_TEMPERATURE,
        softmax: bool = True,
        mask: jax.Array | None = None,
        block_size: int | None = None) -> jax.Array:
  """Soft neighbourhood density of the target predictions (or features).

  Saito et al., "Tune it the Right Way: Unsupervised Validation of Domain
  Adaptation via Soft Neighborhood Density", ICCV 2021. With `x_i` the target
  softmax vectors (`softmax=True`, the paper's choice) or the given vectors
  (features, `softmax=False`), L2-normalised:

      S_ij = <x_i, x_j> / T   (j != i),     P_ij = softmax_j(S_ij),
      SND = 1/n sum_i -sum_{j != i} P_ij log P_ij.

  Higher is better: dense neighbourhoods (points with many close
  neighbours) mean clustered target predictions. The maximum, `log(n - 1)`,
  is reached when all vectors coincide. Self-similarity is removed exactly
  and the entropy is exact; the authors' code instead sets `S_ii = -1/T` and
  adds `1e-5` inside the log (which lowers the value by up to about
  `1e-5 (n - 1)` for near-uniform rows).

  The `(n, n)` similarity matrix comes from one matrix product; with
  `block_size`, only `(block_size, n)` rows of it exist at a time (for large
  target sets).

  Args:
    values: `(n, C)` target logits (`softmax=True`) or `(n, d)` vectors to
      use as they are (`softmax=False`, e.g. features or probabilities).
    temperature: `T`.
    softmax: apply a softmax to `values` first.
    mask: `(n,)` real rows; padded rows are neither queries nor neighbours.
    block_size: rows of the similarity matrix computed at a time; None for
      all at once.
  """
  values = as_float_matrix(values)
  n = values.shape[0]
  mask = _row_mask(n, mask)
  vectors = jax.nn.softmax(values, axis=1) if softmax else values
  vectors = _l2_normalize(vectors)
  rows = jnp.arange(n)
  if block_size is None or block_size >= n:
    entropies = _neighbourhood_entropies(vectors, vectors, rows, mask, temperature)
  else:
    num_blocks = -(-n // block_size)
    padding = num_blocks * block_size - n
    blocked_vectors = jnp.pad(vectors, ((0, padding), (0, 0))).reshape(
        num_blocks, block_size, -1)
    blocked_rows = jnp.pad(rows, (0, padding)).reshape(num_blocks, block_size)
    entropies = jax.lax.map(
        lambda block: _neighbourhood_entropies(block[0], vectors, block[1], mask, temperature),
        (blocked_vectors, blocked_rows)).reshape(-1)[:n]
  return _masked_mean(entropies, mask)


# ----------------------------------------------------------------------------
# Importance weighting: domain classifier, DEV, IWCV.
# ----------------------------------------------------------------------------


class DomainClassifier(NamedTuple):
  """L2-regularised logistic regression `P(target | x)` on standardised features.

  `log_size_ratio = log(n_s / n_t)` of the fitting sets turns its log-odds into
  the log density ratio (see `density_ratio`).
  """
  mean: jax.Array
  scale: jax.Array
  weights: jax.Array
  bias: jax.Array
  log_size_ratio: jax.Array

  def log_odds(self, features: jax.Array) -> jax.Array:
    """`log P(target | x) / P(source | x)`, `(n,)`."""
    standardised = (as_float_matrix(features) - self.mean) / self.scale
    return _matmul(standardised, self.weights) + self.bias


@functools.partial(jax.jit, static_argnames="max_iterations")
def fit_domain_classifier(source_features: jax.Array,
                          target_features: jax.Array,
                          *,
                          source_mask: jax.Array | None = None,
                          target_mask: jax.Array | None = None,
                          l2: float = DEFAULT_L2,
                          max_iterations: int = DEFAULT_NEWTON_ITERATIONS) -> DomainClassifier:
  """Fits `P(target | x) = sigmoid(w . z(x) + b)` by damped Newton (IRLS).

  `z(x) = (x - mean) / std` with the mean and standard deviation of the
  pooled (real) fitting rows (a constant feature gets std 1). Minimises

      1/n sum_i [softplus(a_i) - t_i a_i] + l2/2 |w|^2,   a_i = w . z(x_i) + b,

  `t_i = 1` for target rows, 0 for source rows, `n = n_s + n_t`; the
  intercept is not penalised. Strictly convex for `l2 > 0`, so the minimiser
  is unique and the fit deterministic: Newton steps from 0, each halved until
  it decreases the objective (Armijo), until a step moves no parameter by
  more than `100 eps (1 + max |theta|)` or after `max_iterations` steps.

  Args:
    source_features: `(n_s, d)` source rows of the fitting set.
    target_features: `(n_t, d)` target rows of the fitting set.
    source_mask: `(n_s,)` real source rows.
    target_mask: `(n_t,)` real target rows.
    l2: penalty on `w` (per mean log-loss; sklearn's `C` is `1 / (l2 n)`).
    max_iterations: Newton step budget.
  """
  source_features = as_float_matrix(source_features)
  target_features = as_float_matrix(target_features).astype(source_features.dtype)
  dtype = source_features.dtype
  source_mask = _row_mask(source_features.shape[0], source_mask)
  target_mask = _row_mask(target_features.shape[0], target_mask)
  real = jnp.concatenate([source_mask, target_mask])
  features = jnp.where(real[:, None], jnp.concatenate([source_features, target_features]), 0.0)
  row_weights = real.astype(dtype)
  domains = jnp.concatenate([jnp.zeros(source_features.shape[0], dtype),
                             jnp.ones(target_features.shape[0], dtype)])
  count = jnp.sum(row_weights)
  row_weights = row_weights / count
  n_s, n_t = jnp.sum(source_mask).astype(dtype), jnp.sum(target_mask).astype(dtype)

  mean = _matmul(row_weights, features)
  std = jnp.sqrt(_matmul(row_weights, (features - mean)**2))
  scale = jnp.where(std > jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(mean), 1.0), std, 1.0)
  design = jnp.concatenate(
      [(features - mean) / scale, jnp.ones((features.shape[0], 1), dtype)], axis=1)
  design = jnp.where(real[:, None], design, 0.0)
  num_parameters = design.shape[1]
  penalty = jnp.full((num_parameters,), l2, dtype).at[-1].set(0.0)
  eps = jnp.finfo(dtype).eps

  def objective(theta, logits):
    return (jnp.sum(row_weights * (jax.nn.softplus(logits) - domains * logits))
            + 0.5 * jnp.sum(penalty * theta**2))

  def newton_step(state):
    theta, logits, value, iteration, _ = state
    probs = jax.nn.sigmoid(logits)
    gradient = _matmul(design.T, row_weights * (probs - domains)) + penalty * theta
    curvature = row_weights * probs * (1.0 - probs)
    hessian = _matmul(design.T * curvature, design) + jnp.diag(penalty)
    # A relative jitter keeps the factorisation defined when every
    # probability saturates (it only slows the steps down).
    hessian = hessian + 10 * eps * jnp.trace(hessian) / num_parameters * jnp.eye(num_parameters)
    direction = -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(hessian), gradient)
    logits_direction = _matmul(design, direction)
    slope = jnp.dot(gradient, direction)
    value_at = lambda size: objective(theta + size * direction,  # noqa: E731
                                      logits + size * logits_direction)

    def too_long(search):
      size, candidate_value = search
      slack = 4 * eps * jnp.abs(value)
      return (candidate_value > value + 1e-4 * size * slope + slack) & (size > 2.0**-40)

    def halve(search):
      size, _ = search
      return size / 2, value_at(size / 2)

    one = jnp.ones((), dtype)
    size, new_value = jax.lax.while_loop(too_long, halve, (one, value_at(one)))
    step = size * direction
    new_theta = theta + step
    return (new_theta, _matmul(design, new_theta), new_value, iteration + 1,
            jnp.max(jnp.abs(step)))

  def keep_going(state):
    theta, _, _, iteration, last_step = state
    return (iteration < max_iterations) & (
        last_step > 100 * eps * (1.0 + jnp.max(jnp.abs(theta))))

  theta = jnp.zeros((num_parameters,), dtype)
  logits = jnp.zeros((design.shape[0],), dtype)
  theta, *_ = jax.lax.while_loop(
      keep_going, newton_step,
      (theta, logits, objective(theta, logits), 0, jnp.asarray(jnp.inf, dtype)))
  return DomainClassifier(mean=mean, scale=scale, weights=theta[:-1], bias=theta[-1],
                          log_size_ratio=jnp.log(n_s / n_t))


@jax.jit
def density_ratio(classifier: DomainClassifier, features: jax.Array) -> jax.Array:
  """`w(x) = p_t(x) / p_s(x) = (n_s / n_t) P(target | x) / P(source | x)`, `(n,)`.

  Bayes' rule with the class priors `n_t / n` and `n_s / n` of the fitting
  sets, which an unweighted logistic regression learns in its intercept.
  """
  return jnp.exp(classifier.log_odds(features) + classifier.log_size_ratio)


@functools.partial(jax.jit, static_argnames="max_iterations")
def importance_weights(source_features: jax.Array,
                       target_features: jax.Array,
                       *,
                       fit_source_features: jax.Array | None = None,
                       fit_target_features: jax.Array | None = None,
                       source_mask: jax.Array | None = None,
                       target_mask: jax.Array | None = None,
                       fit_source_mask: jax.Array | None = None,
                       fit_target_mask: jax.Array | None = None,
                       l2: float = DEFAULT_L2,
                       max_iterations: int = DEFAULT_NEWTON_ITERATIONS) -> jax.Array:
  """Density ratios `w(x_i)` of the source validation rows `source_features`.

  The domain classifier is fitted on `fit_source_features` vs
  `fit_target_features`, which default to `source_features` vs
  `target_features` (the one eval pass); the DEV paper fits on source
  *training* features vs target features and weights the source validation
  ones, which is what passing `fit_source_features` does. Fitting and
  weighting the same rows leaves a small in-sample bias (the weights of the
  fitted rows lean towards their own domain), negligible for a linear
  classifier on thousands of rows.

  Args:
    source_features: `(n_s, d)` features of the rows to weight.
    target_features: `(n_t, d)` target features.
    fit_source_features: `(m_s, d)` source rows to fit on instead of
      `source_features`.
    fit_target_features: `(m_t, d)` target rows to fit on instead of
      `target_features`.
    source_mask, target_mask, fit_source_mask, fit_target_mask: real rows of
      each array (a default fitting set takes the mask of its array).
    l2, max_iterations: see `fit_domain_classifier`.

  Returns:
    `(n_s,)` weights (0 on masked rows).
  """
  fit_source, fit_source_mask = ((source_features, source_mask) if fit_source_features is None
                                 else (fit_source_features, fit_source_mask))
  fit_target, fit_target_mask = ((target_features, target_mask) if fit_target_features is None
                                 else (fit_target_features, fit_target_mask))
  classifier = fit_domain_classifier(fit_source, fit_target, source_mask=fit_source_mask,
                                     target_mask=fit_target_mask, l2=l2,
                                     max_iterations=max_iterations)
  weights = density_ratio(classifier, source_features)
  return jnp.where(_row_mask(weights.shape[0], source_mask), weights, 0.0)


@functools.partial(jax.jit, static_argnames="loss")
def per_example_loss(logits: jax.Array, labels: jax.Array,
                     loss: str = "cross_entropy") -> jax.Array:
  """`(n,)` cross-entropy `-log softmax(logits)_y` or 0-1 error `1[argmax != y]`."""
  logits = as_float_matrix(logits)
  if loss == "cross_entropy":
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  if loss == "zero_one":
    return (jnp.argmax(logits, axis=1) != labels).astype(logits.dtype)
  raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


@jax.jit
def iwcv_risk(weights: jax.Array, losses: jax.Array, *,
              mask: jax.Array | None = None) -> jax.Array:
  """Importance-weighted risk `1/n sum_i w_i l_i` (Sugiyama et al., JMLR 2007).

  Unbiased for the target risk `E_t[l]` when `w = p_t / p_s` and the `l_i`
  are losses on source draws.
  """
  weights, losses = as_float(weights), as_float(losses)
  return _masked_mean(weights * losses, _row_mask(weights.shape[0], mask))


@jax.jit
def dev_risk(weights: jax.Array, losses: jax.Array, *,
             mask: jax.Array | None = None) -> jax.Array:
  """Deep embedded validation risk with its control variate (You et al., ICML 2019).

      L_i = w_i l_i,   eta = -Cov(L, W) / Var(W),
      DEV = mean(L) + eta mean(W) - eta.

  `W` has known mean 1 under the source distribution, so `eta (mean(W) - 1)`
  is a zero-mean control variate and `eta` the variance-minimising
  coefficient. Equivalently, DEV is the least-squares line of `L` on `W`
  evaluated at `W = 1`: it equals IWCV when `mean(W) = 1`, and `c` when every
  loss is `c`. The covariance normalisation cancels in `eta`. When `Var(W)`
  is 0 to working precision (constant weights), `eta = 0` and DEV is IWCV.

  Args:
    weights: `(n,)` density ratios `w_i` of the source validation rows.
    losses: `(n,)` per-example losses `l_i`.
    mask: `(n,)` real rows.
  """
  weights, losses = as_float(weights), as_float(losses)
  mask = _row_mask(weights.shape[0], mask)
  weighted = weights * losses
  mean_weighted = _masked_mean(weighted, mask)
  mean_weight = _masked_mean(weights, mask)
  centred_weights = weights - mean_weight
  covariance = _masked_mean((weighted - mean_weighted) * centred_weights, mask)
  variance = _masked_mean(centred_weights**2, mask)
  count = jnp.sum(mask).astype(weights.dtype)
  negligible = count * (jnp.finfo(weights.dtype).eps * mean_weight)**2
  eta = jnp.where(variance > negligible, -covariance / jnp.where(variance > 0, variance, 1.0),
                  0.0)
  return mean_weighted + eta * mean_weight - eta


@functools.partial(jax.jit, static_argnames=("loss", "max_iterations"))
def dev(source_logits: jax.Array,
        source_labels: jax.Array,
        source_features: jax.Array,
        target_features: jax.Array,
        *,
        source_mask: jax.Array | None = None,
        target_mask: jax.Array | None = None,
        loss: str = "cross_entropy",
        fit_source_features: jax.Array | None = None,
        fit_target_features: jax.Array | None = None,
        fit_source_mask: jax.Array | None = None,
        fit_target_mask: jax.Array | None = None,
        l2: float = DEFAULT_L2,
        max_iterations: int = DEFAULT_NEWTON_ITERATIONS) -> jax.Array:
  """Deep embedded validation of a model (You et al., ICML 2019). Lower is better.

  `dev_risk` of the per-example losses on the source validation rows,
  weighted by `importance_weights` (a domain classifier on features).

  Args:
    source_logits: `(n_s, C)` logits on the source validation rows.
    source_labels: `(n_s,)` their labels.
    source_features: `(n_s, d)` their features (the rows that are weighted).
    target_features: `(n_t, d)` target features.
    source_mask: `(n_s,)` real source rows.
    target_mask: `(n_t,)` real target rows.
    loss: `'cross_entropy'` or `'zero_one'` (the error of the DEV authors'
      code).
    fit_source_features, fit_target_features, fit_source_mask,
      fit_target_mask, l2, max_iterations: the domain classifier's fitting
      set and options; see `importance_weights`.
  """
  weights = importance_weights(
      source_features, target_features, source_mask=source_mask, target_mask=target_mask,
      fit_source_features=fit_source_features, fit_target_features=fit_target_features,
      fit_source_mask=fit_source_mask, fit_target_mask=fit_target_mask, l2=l2,
      max_iterations=max_iterations)
  return dev_risk(weights, per_example_loss(source_logits, source_labels, loss),
                  mask=source_mask)


@functools.partial(jax.jit, static_argnames=("loss", "max_iterations"))
def iwcv(source_logits: jax.Array,
         source_labels: jax.Array,
         source_features: jax.Array,
         target_features: jax.Array,
         *,
         source_mask: jax.Array | None = None,
         target_mask: jax.Array | None = None,
         loss: str = "cross_entropy",
         fit_source_features: jax.Array | None = None,
         fit_target_features: jax.Array | None = None,
         fit_source_mask: jax.Array | None = None,
         fit_target_mask: jax.Array | None = None,
         l2: float = DEFAULT_L2,
         max_iterations: int = DEFAULT_NEWTON_ITERATIONS) -> jax.Array:
  """Importance-weighted validation of a model (Sugiyama et al., JMLR 2007). Lower is better.

  `iwcv_risk` of the per-example losses on the source validation rows,
  weighted by `importance_weights`; arguments as in `dev`.
  """
  weights = importance_weights(
      source_features, target_features, source_mask=source_mask, target_mask=target_mask,
      fit_source_features=fit_source_features, fit_target_features=fit_target_features,
      fit_source_mask=fit_source_mask, fit_target_mask=fit_target_mask, l2=l2,
      max_iterations=max_iterations)
  return iwcv_risk(weights, per_example_loss(source_logits, source_labels, loss),
                   mask=source_mask)


# ----------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------

INPUTS = ("source_logits", "source_labels", "source_features", "source_mask",
          "target_logits", "target_features", "target_mask", "target_labels")


@dataclasses.dataclass(frozen=True)
class Validator:
  """One row of the table.

  Attributes:
    name: the key in evaluation records.
    higher_is_better: direction of selection.
    inputs: arrays it reads, by their names in `INPUTS` (masks are optional
      and read when present).
    compute: `inputs mapping -> scalar`; None when the evaluation loop
      computes the value itself (the oracle).
    description: one line for tables and logs.
    label_kind: the tasks it applies to: 'classification' (it reads class
      logits or labels), 'regression', or 'any'.
  """
  name: str
  higher_is_better: bool
  inputs: tuple[str, ...]
  compute: Callable[[Mapping[str, Any]], jax.Array] | None
  description: str
  label_kind: str = "classification"


def _importance_weights_of(a: Mapping[str, Any]) -> jax.Array:
  """The source weights of one eval pass; `evaluate` computes them once for
  both DEV and IWCV and passes them under a private key."""
  weights = a.get(_WEIGHTS_KEY)
  if weights is None:
    weights = importance_weights(a["source_features"], a["target_features"],
                                 source_mask=a.get("source_mask"),
                                 target_mask=a.get("target_mask"))
  return weights


def _risk_entry(risk_fn):
  def compute(a):
    losses = per_example_loss(a["source_logits"], a["source_labels"])
    return risk_fn(_importance_weights_of(a), losses, mask=a.get("source_mask"))
  return compute


_WEIGHTS_KEY = "_importance_weights"
_WEIGHTED = ("dev", "iwcv")


VALIDATORS: dict[str, Validator] = {v.name: v for v in (
    Validator("source_accuracy", True, ("source_logits", "source_labels"),
              lambda a: source_accuracy(a["source_logits"], a["source_labels"],
                                        mask=a.get("source_mask")),
              "accuracy on held-out source data"),
    Validator("target_entropy", False, ("target_logits",),
              lambda a: target_entropy(a["target_logits"], mask=a.get("target_mask")),
              "mean entropy of the target predictions"),
    Validator("snd", True, ("target_logits",),
              lambda a: snd(a["target_logits"], mask=a.get("target_mask")),
              "soft neighbourhood density of the target softmax (Saito et al. 2021)"),
    Validator("snd_features", True, ("target_features",),
              lambda a: snd(a["target_features"], softmax=False, mask=a.get("target_mask")),
              "soft neighbourhood density of the target features"),
    Validator("bnm", True, ("target_logits",),
              lambda a: bnm_score(a["target_logits"], mask=a.get("target_mask")),
              "nuclear norm of the target softmax matrix / n (Cui et al. 2020)"),
    Validator("dev", False,
              ("source_logits", "source_labels", "source_features", "target_features"),
              _risk_entry(dev_risk),
              "deep embedded validation, cross-entropy (You et al. 2019)"),
    Validator("iwcv", False,
              ("source_logits", "source_labels", "source_features", "target_features"),
              _risk_entry(iwcv_risk),
              "importance-weighted source cross-entropy (Sugiyama et al. 2007)"),
    Validator("source_mae", False, ("source_logits", "source_labels"),
              lambda a: source_mae(a["source_logits"], a["source_labels"],
                                   mask=a.get("source_mask")),
              "mean absolute error on held-out source data (regression)", "regression"),
    Validator("oracle", True, ("target_logits", "target_labels"), None,
              "the task's target metric, with target labels (computed by the evaluation "
              "loop; for regression its mean absolute error, lower is better)", "any"),
)}


def evaluate(inputs: Mapping[str, Any],
             names: Iterable[str] | None = None) -> dict[str, jax.Array]:
  """Computes validators from one evaluation pass.

  Args:
    inputs: arrays by their names in `INPUTS`.
    names: validators to compute; None for every one with a `compute` whose
      inputs are all present and whose label kind matches the inputs' (float
      `source_labels`: regression; otherwise classification).

  Raises:
    KeyError: for an unknown name or a named validator whose inputs are missing.
  """
  unknown = set(inputs) - set(INPUTS)
  if unknown:
    raise KeyError(f"unknown inputs {sorted(unknown)}; expected names from {INPUTS}")
  if names is None:
    labels = inputs.get("source_labels")
    kind = ("regression" if labels is not None and jnp.issubdtype(jnp.asarray(labels).dtype,
                                                                     jnp.floating)
            else "classification")
    names = [name for name, v in VALIDATORS.items()
             if v.compute is not None and v.label_kind in (kind, "any")
             and all(inputs.get(k) is not None for k in v.inputs)]
  names = list(names)
  arrays = dict(inputs)
  if any(name in _WEIGHTED for name in names) and all(
      inputs.get(k) is not None for k in VALIDATORS["dev"].inputs):
    arrays[_WEIGHTS_KEY] = _importance_weights_of(arrays)
  results = {}
  for name in names:
    if name not in VALIDATORS:
      raise KeyError(f"unknown validator {name!r}; known: {sorted(VALIDATORS)}")
    validator = VALIDATORS[name]
    if validator.compute is None:
      raise KeyError(f"{name!r} is computed by the evaluation loop, not here")
    missing = [k for k in validator.inputs if inputs.get(k) is None]
    if missing:
      raise KeyError(f"validator {name!r} needs {missing}")
    results[name] = validator.compute(arrays)
  return results


# ----------------------------------------------------------------------------
# Selection and rank correlation across evaluation records.
# ----------------------------------------------------------------------------


def spearman(x: Any, y: Any) -> float:
  """Spearman's rank correlation, scipy's `spearmanr` (ties share the mean of
  their positions), on the host: it ranks evaluation records, never inside a
  step. nan when either input is constant or has fewer than 2 values (scipy
  warns there; a validator that never changes simply ranks nothing).

  Args:
    x: `(m,)` finite values (`rank_correlations` drops the records with gaps).
    y: `(m,)` finite values.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
    return math.nan
  return float(scipy.stats.spearmanr(x, y).statistic)


Records = Mapping[int, Mapping[str, Any]] | Iterable[tuple[int, Mapping[str, Any]]]


def _sorted_records(records: Records) -> list[tuple[int, dict[str, float]]]:
  items = records.items() if isinstance(records, Mapping) else records
  rows = [(int(step), {name: float(value) for name, value in values.items()
                       if value is not None})
          for step, values in items]
  steps = [step for step, _ in rows]
  if len(set(steps)) != len(steps):
    raise ValueError(f"duplicate steps in the records: {sorted(steps)}")
  return sorted(rows, key=lambda row: row[0])


def _direction(name: str, directions: Mapping[str, bool] | None) -> bool:
  if directions is not None and name in directions:
    return bool(directions[name])
  if name in VALIDATORS:
    return VALIDATORS[name].higher_is_better
  raise KeyError(f"no direction for {name!r}: not in VALIDATORS, pass it in `directions`")


def select_steps(records: Records, *,
                 directions: Mapping[str, bool] | None = None) -> dict[str, int]:
  """The step each validator selects: its best value, the earliest step on ties.

  Args:
    records: `step -> {validator: value}` (a mapping or `(step, values)`
      pairs); a validator may be missing from some records. None and nan
      values are skipped (a score that could not be computed selects nothing).
    directions: `name -> higher_is_better` for names outside `VALIDATORS`
      (or to override them).

  Returns:
    `validator -> step`, for every validator with a finite value somewhere.
  """
  best: dict[str, tuple[int, float]] = {}
  for step, values in _sorted_records(records):
    for name, value in values.items():
      if math.isnan(value):
        continue
      sign = 1.0 if _direction(name, directions) else -1.0
      if name not in best or sign * value > sign * best[name][1]:
        best[name] = (step, value)
  return {name: step for name, (step, _) in best.items()}


def rank_correlations(records: Records, *, reference: str = "oracle",
                      oriented: bool = False,
                      directions: Mapping[str, bool] | None = None) -> dict[str, float]:
  """Spearman correlation of each validator with `reference` across records.

  Only records with finite values of both enter each correlation. With
  `oriented=True` the correlation of lower-is-better validators is negated,
  so that for every validator +1 means "ranks the records as the target
  accuracy does".

  Returns:
    `validator -> correlation` for every validator other than `reference`
    (nan with fewer than 2 usable records or a constant column).
  """
  rows = _sorted_records(records)
  names = sorted({name for _, values in rows for name in values} - {reference})
  correlations = {}
  for name in names:
    pairs = np.asarray([(values[name], values[reference]) for _, values in rows
                        if name in values and reference in values
                        and not math.isnan(values[name]) and not math.isnan(values[reference])],
                       np.float64).reshape(-1, 2)
    value = spearman(pairs[:, 0], pairs[:, 1])
    if oriented and not _direction(name, directions):
      value = -value
    correlations[name] = value
  return correlations


__all__ = [
    "SND_TEMPERATURE", "DEFAULT_L2", "DEFAULT_NEWTON_ITERATIONS", "LOSSES", "INPUTS",
    "source_accuracy", "source_mae", "target_entropy", "bnm_score", "snd",
    "DomainClassifier", "fit_domain_classifier", "density_ratio", "importance_weights",
    "per_example_loss", "iwcv_risk", "dev_risk", "dev", "iwcv",
    "Validator", "VALIDATORS", "evaluate", "spearman", "select_steps", "rank_correlations",
]
