"""Tests for `tljax.losses` against float64 numpy references written from the
formulas (TLlib's index matrices with explicit loops over pairs, closed forms,
scipy for the DAN weights), plus jit, degenerate-batch and sharding checks."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import tljax.losses as L
from tljax.models.heads import DomainDiscriminator
from tljax.losses.kernels import GaussianKernel, pairwise_squared_distances
from tljax.losses.mmd import linear_time_h_statistics

RTOL = 1e-5
ALPHAS = tuple(2.0**k for k in range(-3, 2))


def _f32(x):
  return np.asarray(x, np.float32)


def _random(seed, *shape, shift=0.0):
  return _f32(np.random.default_rng(seed).normal(size=shape) + shift)


# ----------------------------------------------------------------------------
# Numpy references.
# ----------------------------------------------------------------------------


def np_squared_distances(x):
  x = np.asarray(x, np.float64)
  n = len(x)
  distances = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      distances[i, j] = np.sum((x[i] - x[j])**2)
  return distances


def np_kernel_sum(x, kernels, weights=None):
  """TLlib's GaussianKernel modules summed: sigma^2 = alpha * mean(D) or sigma^2."""
  distances = np_squared_distances(x)
  total = np.zeros_like(distances)
  for u, kernel in enumerate(kernels):
    sigma_square = kernel.sigma**2 if kernel.sigma is not None else kernel.alpha * distances.mean()
    weight = 1.0 if weights is None else weights[u]
    total += weight * np.exp(-distances / (2 * sigma_square))
  return total


def np_index_matrix(n, linear):
  """TLlib's `_update_index_matrix`, loop for loop."""
  index = np.zeros((2 * n, 2 * n))
  if linear:
    for i in range(n):
      s1, s2 = i, (i + 1) % n
      t1, t2 = s1 + n, s2 + n
      index[s1, s2] = 1.0 / n
      index[t1, t2] = 1.0 / n
      index[s1, t2] = -1.0 / n
      index[s2, t1] = -1.0 / n
  else:
    for i in range(n):
      for j in range(n):
        if i != j:
          index[i, j] = 1.0 / (n * (n - 1))
          index[i + n, j + n] = 1.0 / (n * (n - 1))
    for i in range(n):
      for j in range(n):
        index[i, j + n] = -1.0 / (n * n)
        index[i + n, j] = -1.0 / (n * n)
  return index


def np_kernel_mmd(source_layers, target_layers, layer_kernels, linear, weights=None):
  n = len(source_layers[0])
  kernel = np.ones((2 * n, 2 * n))
  for layer, (source, target, kernels) in enumerate(
      zip(source_layers, target_layers, layer_kernels)):
    features = np.concatenate([source, target]).astype(np.float64)
    kernel *= np_kernel_sum(features, kernels, None if weights is None else weights[layer])
  return np.sum(kernel * np_index_matrix(n, linear)) + 2.0 / (n - 1)


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_tllib_entropy(p):
  return -np.sum(p * np.log(p + 1e-5), axis=-1)


def slsqp_kernel_weights(d, q):
  """min b^T q b s.t. d^T b = 1, b >= 0 with scipy, best of several feasible starts."""
  m = len(d)
  starts = [np.eye(m)[u] / d[u] for u in range(m) if d[u] > 0]
  if d.sum() > 0:
    starts.append(np.ones(m) / d.sum())
  best = None
  for start in starts:
    result = scipy.optimize.minimize(
        lambda b: b @ q @ b, start, jac=lambda b: 2 * q @ b, method="SLSQP",
        bounds=[(0, None)] * m,
        constraints=[{"type": "eq", "fun": lambda b: d @ b - 1, "jac": lambda b: d}],
        options={"ftol": 1e-15, "maxiter": 1000})
    if best is None or result.fun < best.fun:
      best = result
  return best.x / best.x.sum(), best.fun


# ----------------------------------------------------------------------------
# Kernels and MK-MMD.
# ----------------------------------------------------------------------------


def test_kernel_matrices_match_formula():
  x = _random(0, 12, 5)
  x[3] = x[7]  # a duplicated row must be at distance exactly 0
  kernels = L.kernel_bank(ALPHAS) + (GaussianKernel(sigma=0.92),)
  got = np.asarray(L.gaussian_kernel_matrices(x, kernels))
  distances = np_squared_distances(x)
  mean = distances.mean()  # all 144 ordered pairs, diagonal included
  for u, alpha in enumerate(ALPHAS):
    np.testing.assert_allclose(got[u], np.exp(-distances / (2 * alpha * mean)), rtol=RTOL,
                               atol=1e-6)
  np.testing.assert_allclose(got[-1], np.exp(-distances / (2 * 0.92**2)), rtol=RTOL, atol=1e-6)
  assert np.asarray(pairwise_squared_distances(jnp.asarray(x)))[3, 7] == 0.0


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("n", [2, 3, 17])
def test_mk_mmd_matches_tllib_index_matrix(n, linear):
  # n = 2 exercises TLlib's linear index matrix, which overwrites its two
  # cross entries instead of accumulating them.
  source, target = _random(1, n, 6), _random(2, n, 6, shift=0.7)
  expected = np_kernel_mmd([source], [target], [L.kernel_bank(ALPHAS)], linear)
  got = jax.jit(L.mk_mmd, static_argnames=("linear", "alphas"))(source, target, alphas=ALPHAS,
                                                                linear=linear)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


@pytest.mark.parametrize("linear", [False, True])
def test_mk_mmd_with_kernel_weights_matches_numpy(linear):
  source, target = _random(3, 10, 4), _random(4, 10, 4, shift=0.5)
  weights = np.array([0.1, 0.0, 0.4, 0.3, 0.2])
  expected = np_kernel_mmd([source], [target], [L.kernel_bank(ALPHAS)], linear, [weights])
  got = L.mk_mmd(source, target, alphas=ALPHAS, linear=linear,
                 kernel_weights=jnp.asarray(weights, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_mmd_of_a_sample_with_itself_closed_form():
  """MK-MMD(X, X) by hand.

  The concatenated batch is [X; X], so its mean squared distance is that of X
  and the kernel matrix is [[A, A], [A, A]] with A the kernel sum on X
  (A_ii = m, the number of kernels). TLlib's quadratic estimate is then

      2/(n(n-1)) S_off - 2/n^2 (S_off + n m) + 2/(n-1)
        = 2 S_off / (n^2 (n-1)) - 2 m / n + 2/(n-1),   S_off = sum_{i!=j} A_ij:

  the unbiased U-statistic of a sample against itself is not 0 but
  -(2/n) (m - mean off-diagonal A) < 0, and TLlib's constant 2/(n-1) is added.
  The linear estimate pairs k(x_i, x_{i+1}) twice with + and twice with -, so
  it is exactly 2/(n-1).
  """
  n = 10
  x = _random(5, n, 4)
  a = np_kernel_sum(x, L.kernel_bank(ALPHAS))
  off_diagonal = a.sum() - np.trace(a)
  m = len(ALPHAS)
  expected = 2 * off_diagonal / (n**2 * (n - 1)) - 2 * m / n + 2 / (n - 1)
  np.testing.assert_allclose(L.mk_mmd(x, x, alphas=ALPHAS), expected, rtol=RTOL)
  np.testing.assert_allclose(L.mk_mmd(x, x, alphas=ALPHAS, linear=True), 2 / (n - 1), rtol=RTOL)


def test_mmd_small_for_same_distribution_and_grows_with_mean_shift():
  n = 64
  source, target = _random(6, n, 8), _random(7, n, 8)
  offset = 2 / (n - 1)
  same = float(L.mk_mmd(source, target, alphas=ALPHAS)) - offset
  shifts = [0.5, 1.0, 2.0, 4.0]
  shifted = [float(L.mk_mmd(source, target + s, alphas=ALPHAS)) - offset for s in shifts]
  # The kernel sum is at most 5, so the MMD part is at most 10: the sampling
  # noise of the unbiased estimate at n = 64 is a fraction of a percent of it.
  assert abs(same) < 0.05
  assert shifted[0] > 5 * abs(same)
  assert all(b > a for a, b in zip([same] + shifted, shifted)), shifted
  linear_same = float(L.mk_mmd(source, target, alphas=ALPHAS, linear=True)) - offset
  linear_far = float(L.mk_mmd(source, target + 4.0, alphas=ALPHAS, linear=True)) - offset
  assert linear_far > linear_same + 1.0


def test_estimators_are_unbiased_for_population_mmd():
  """Both estimators average to MMD^2 + 2/(n-1) over many draws.

  With a fixed-bandwidth kernel exp(-|z|^2 / (2 s^2)) and P = N(0, I_d),
  Q = N(mu, I_d): E k(x, x') = c exp(-|m|^2 / (2 (s^2 + 2))) for x - x' ~
  N(m, 2 I), c = (s^2 / (s^2 + 2))^(d/2), so
  MMD^2 = 2 c (1 - exp(-|mu|^2 / (2 (s^2 + 2)))).
  """
  n, d, sigma, draws = 16, 3, 1.5, 4000
  mu = np.array([0.8, 0.0, 0.0])
  c = (sigma**2 / (sigma**2 + 2))**(d / 2)
  population = 2 * c * (1 - np.exp(-mu @ mu / (2 * (sigma**2 + 2))))

  def one_draw(key):
    key_s, key_t = jax.random.split(key)
    source = jax.random.normal(key_s, (n, d))
    target = jax.random.normal(key_t, (n, d)) + jnp.asarray(mu, jnp.float32)
    return (L.mmd(source, target, sigma=sigma), L.mmd(source, target, sigma=sigma, linear=True))

  keys = jax.random.split(jax.random.key(0), draws)
  quadratic, linear = (np.asarray(v, np.float64) for v in jax.jit(jax.vmap(one_draw))(keys))
  for estimates in (quadratic, linear):
    standard_error = estimates.std() / math.sqrt(draws)
    assert abs(estimates.mean() - (population + 2 / (n - 1))) < 4 * standard_error


def test_single_kernel_mmd():
  source, target = _random(8, 9, 3), _random(9, 9, 3, shift=0.3)
  np.testing.assert_allclose(L.mmd(source, target, alpha=0.5),
                             L.mk_mmd(source, target, alphas=(0.5,)), rtol=RTOL)
  fixed = (GaussianKernel(sigma=1.3),)
  for linear in (False, True):
    np.testing.assert_allclose(L.mmd(source, target, sigma=1.3, linear=linear),
                               np_kernel_mmd([source], [target], [fixed], linear), rtol=RTOL)


# ----------------------------------------------------------------------------
# DAN kernel weights.
# ----------------------------------------------------------------------------


_max_test_power_weights = jax.jit(L.max_test_power_weights, static_argnames="eps")


@pytest.mark.parametrize("seed", range(6))
def test_max_test_power_weights_match_slsqp(seed):
  rng = np.random.default_rng(seed)
  m = 5
  factor = rng.normal(size=(m, m))
  q = factor @ factor.T / m + 0.05 * np.eye(m)
  d = rng.normal(0.3, 1.0, size=m)
  d[0] = abs(d[0])  # at least one positive estimate: feasible
  eps = 1e-3
  expected, objective = slsqp_kernel_weights(d, q + eps * np.eye(m))
  beta = np.asarray(_max_test_power_weights(_f32(d), _f32(q), eps=eps), np.float64)
  assert np.all(beta >= 0) and abs(beta.sum() - 1) < 1e-6
  np.testing.assert_allclose(beta, expected, atol=2e-4)
  rescaled = beta / (d @ beta)  # back onto d^T beta = 1
  np.testing.assert_allclose(rescaled @ (q + eps * np.eye(m)) @ rescaled, objective, rtol=1e-4)


def test_max_test_power_weights_infeasible_is_uniform():
  beta = _max_test_power_weights(-np.ones(5, np.float32), np.eye(5, dtype=np.float32), eps=1e-3)
  np.testing.assert_allclose(beta, np.full(5, 0.2), rtol=RTOL)


def test_dan_kernel_weights_match_numpy_and_scipy():
  n = 32
  source, target = _random(10, n, 4), _random(11, n, 4, shift=0.6)
  features = np.concatenate([source, target]).astype(np.float64)
  mean = np_squared_distances(features).mean()
  h = np.zeros((len(ALPHAS), n // 2))
  for u, alpha in enumerate(ALPHAS):
    k = lambda a, b: np.exp(-np.sum((a - b)**2) / (2 * alpha * mean))  # noqa: E731
    for i in range(n // 2):
      s_a, s_b, t_a, t_b = (np.float64(v) for v in (source[2 * i], source[2 * i + 1],
                                                     target[2 * i], target[2 * i + 1]))
      h[u, i] = k(s_a, s_b) + k(t_a, t_b) - k(s_a, t_b) - k(s_b, t_a)
  np.testing.assert_allclose(
      linear_time_h_statistics(source, target, L.kernel_bank(ALPHAS)), h, rtol=1e-4, atol=1e-6)
  eps = 1e-3
  expected, _ = slsqp_kernel_weights(h.mean(axis=1), np.cov(h) + eps * np.eye(len(ALPHAS)))
  beta = jax.jit(functools.partial(L.dan_kernel_weights, alphas=ALPHAS))(source, target)
  np.testing.assert_allclose(beta, expected, atol=1e-3)


# ----------------------------------------------------------------------------
# JMMD.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("linear", [False, True])
def test_jmmd_with_one_layer_is_mk_mmd(linear):
  source, target = _random(12, 12, 5), _random(13, 12, 5, shift=0.4)
  np.testing.assert_allclose(L.jmmd([source], [target], kernels=[L.kernel_bank(ALPHAS)],
                                    linear=linear),
                             L.mk_mmd(source, target, alphas=ALPHAS, linear=linear), rtol=RTOL)


@pytest.mark.parametrize("linear", [False, True])
def test_jmmd_matches_numpy(linear):
  n = 12
  features_s, features_t = _random(14, n, 6), _random(15, n, 6, shift=0.5)
  probs_s = _f32(np_softmax(_random(16, n, 4)))
  probs_t = _f32(np_softmax(_random(17, n, 4, shift=0.3)))
  kernels = (L.kernel_bank(ALPHAS), (GaussianKernel(sigma=0.92),))  # TLlib's JAN example
  expected = np_kernel_mmd([features_s, probs_s], [features_t, probs_t], kernels, linear)
  got = L.jmmd([features_s, probs_s], [features_t, probs_t], kernels=kernels, linear=linear)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


# ----------------------------------------------------------------------------
# CORAL and CMD.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["tllib", "paper"])
def test_coral_matches_numpy(form):
  source, target = _random(18, 20, 7), 1.5 * _random(19, 13, 7, shift=0.3)
  c_s = np.cov(np.float64(source), rowvar=False)  # n - 1 denominator
  c_t = np.cov(np.float64(target), rowvar=False)
  if form == "tllib":
    expected = (np.mean((source.mean(0) - target.mean(0))**2)
                + np.mean((c_s - c_t)**2))
  else:
    expected = np.sum((c_s - c_t)**2) / (4 * 7**2)
  np.testing.assert_allclose(L.coral(source, target, form=form), expected, rtol=RTOL)


def test_cmd_matches_numpy():
  source = _f32(np.random.default_rng(20).uniform(-1, 2, size=(24, 5)))
  target = _f32(np.random.default_rng(21).uniform(-1, 2, size=(17, 5))**2 / 4 - 1)
  a, b, order = -1.0, 2.0, 4
  x, y = np.float64(source), np.float64(target)
  expected = np.linalg.norm(x.mean(0) - y.mean(0)) / (b - a)
  for k in range(2, order + 1):
    moment_x = np.mean((x - x.mean(0))**k, axis=0)
    moment_y = np.mean((y - y.mean(0))**k, axis=0)
    expected += np.linalg.norm(moment_x - moment_y) / (b - a)**k
  np.testing.assert_allclose(L.cmd(source, target, order=order, bounds=(a, b)), expected,
                             rtol=RTOL)


# ----------------------------------------------------------------------------
# Adversarial pieces.
# ----------------------------------------------------------------------------


def test_gradient_reversal_flips_and_scales_the_gradient():
  x = _random(22, 5, 3)
  weights = _random(23, 5, 3)
  plain = lambda v: jnp.sum(jnp.sin(v) * weights)  # noqa: E731

  @jax.jit
  def reversed_grads(v, coeff):
    return jax.grad(lambda v, c: plain(L.gradient_reversal(v, c)), argnums=(0, 1))(v, coeff)

  coeff = 0.37
  grad_x, grad_coeff = reversed_grads(x, coeff)
  np.testing.assert_allclose(grad_x, -coeff * np.asarray(jax.grad(plain)(x)), rtol=RTOL)
  assert float(grad_coeff) == 0.0
  np.testing.assert_array_equal(L.gradient_reversal(x, coeff), x)


def test_warm_start_coeff_closed_form():
  closed_form = lambda step: 2 / (1 + math.exp(-step / 1000)) - 1  # noqa: E731
  assert float(L.warm_start_coeff(0)) == 0.0
  np.testing.assert_allclose(L.warm_start_coeff(1000), closed_form(1000), rtol=RTOL)
  np.testing.assert_allclose(L.warm_start_coeff(5000), closed_form(5000), rtol=RTOL)
  traced = jax.jit(lambda s: L.warm_start_coeff(s, lo=0.0, hi=0.1, alpha=2.0))(jnp.int32(1500))
  np.testing.assert_allclose(traced, 0.1 * (2 / (1 + math.exp(-3.0)) - 1), rtol=RTOL)


def test_domain_adversarial_loss_matches_numpy():
  d_source, d_target = _random(24, 9), _random(25, 7, shift=-0.5)
  w_source = _f32(np.random.default_rng(26).uniform(0.5, 1.5, 9))
  w_target = _f32(np.random.default_rng(27).uniform(0.5, 1.5, 7))
  sigmoid = lambda z: 1 / (1 + np.exp(-np.float64(z)))  # noqa: E731
  bce_source = -np.log(sigmoid(d_source))
  bce_target = -np.log(1 - sigmoid(d_target))
  np.testing.assert_allclose(L.domain_adversarial_loss(d_source, d_target),
                             0.5 * (bce_source.mean() + bce_target.mean()), rtol=RTOL)
  np.testing.assert_allclose(
      L.domain_adversarial_loss(d_source[:, None], d_target, source_weights=w_source,
                                target_weights=w_target),
      0.5 * ((w_source * bce_source).mean() + (w_target * bce_target).mean()), rtol=RTOL)
  # Saturated logits: exact, finite values (TLlib would clamp at 100).
  np.testing.assert_allclose(L.domain_adversarial_loss(_f32([-300.0]), _f32([200.0])),
                             250.0, rtol=RTOL)
  accuracy = L.domain_accuracy(_f32([1.0, -1.0, 0.0, 2.0]), _f32([-1.0, 0.5]))
  np.testing.assert_allclose(accuracy, 0.5 * (3 / 4 + 1 / 2), rtol=RTOL)


def test_domain_discriminator_structure_and_batch_norm_momentum():
  shapes = jax.eval_shape(lambda key, x: DomainDiscriminator().init(key, x, False),
                          jax.random.key(0), jnp.zeros((4, 256)))
  params = shapes["params"]
  assert params["linear0"]["kernel"].shape == (256, 1024)
  assert params["linear1"]["kernel"].shape == (1024, 1024)
  assert params["output"]["kernel"].shape == (1024, 1)

  model = DomainDiscriminator(hidden_sizes=(16, 16))
  x = _random(28, 8, 7)
  variables = model.init(jax.random.key(1), x, False)
  kernel = np.asarray(variables["params"]["linear0"]["kernel"])
  bias = np.asarray(variables["params"]["linear0"]["bias"])
  assert np.abs(kernel).max() <= 1 / math.sqrt(7) and np.abs(bias).max() <= 1 / math.sqrt(7)
  logits, updates = model.apply(variables, x, True, mutable=["batch_stats"])
  assert logits.shape == (8,) and logits.dtype == jnp.float32
  # PyTorch's BatchNorm1d momentum 0.1: running mean = 0.9 * 0 + 0.1 * batch mean.
  hidden = np.float64(x) @ kernel + bias
  np.testing.assert_allclose(updates["batch_stats"]["bn0"]["mean"], 0.1 * hidden.mean(0),
                             rtol=1e-4, atol=1e-6)
  eval_logits = model.apply({**variables, **updates}, x, False)
  assert np.all(np.isfinite(eval_logits))


# ----------------------------------------------------------------------------
# CDAN.
# ----------------------------------------------------------------------------


def test_multilinear_maps_match_numpy():
  features, probs = _random(29, 6, 5), _f32(np_softmax(_random(30, 6, 3)))
  expected = np.einsum("nc,nf->ncf", probs, features).reshape(6, 15)
  np.testing.assert_allclose(L.multilinear_map(features, probs), expected, rtol=RTOL)

  random_features, random_probs = L.init_randomized_map(jax.random.key(2), 5, 3, output_dim=4096)
  assert random_features.shape == (5, 4096) and random_probs.shape == (3, 4096)
  samples = np.concatenate([np.ravel(random_features), np.ravel(random_probs)])
  assert abs(samples.mean()) < 0.03 and abs(samples.std() - 1) < 0.03
  expected = ((np.float64(features) @ np.float64(random_features))
              * (np.float64(probs) @ np.float64(random_probs)) / 64.0)
  np.testing.assert_allclose(
      L.randomized_multilinear_map(features, probs, random_features, random_probs), expected,
      rtol=1e-4, atol=1e-5)


def test_entropy_weights_and_cdan_e_weighting_match_tllib():
  n = 6
  probs = _f32(np_softmax(3 * _random(31, 2 * n, 4)))
  entropy = np_tllib_entropy(np.float64(probs))
  expected = 1 + np.exp(-entropy)
  expected = expected / expected.sum() * 2 * n  # normalised over the concatenated batch
  weights = L.entropy_weights(probs)
  np.testing.assert_allclose(weights, expected, rtol=RTOL)
  assert np.all(np.asarray(jax.grad(lambda p: jnp.sum(L.entropy_weights(p) * p[:, 0]))(probs)
                           )[:, 1:] == 0)

  # TLlib's CDAN+E: one weighted BCE averaged over the concatenated batch.
  logits = _random(32, 2 * n)
  labels = np.concatenate([np.ones(n), np.zeros(n)])
  p = 1 / (1 + np.exp(-np.float64(logits)))
  tllib = np.mean(expected * -(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
  got = L.domain_adversarial_loss(logits[:n], logits[n:], source_weights=weights[:n],
                                  target_weights=weights[n:])
  np.testing.assert_allclose(got, tllib, rtol=RTOL)


# ----------------------------------------------------------------------------
# MCC, MDD, BSP, AFN, entropy.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [2.5, 1.0])
def test_mcc_matches_numpy(temperature):
  logits = 2 * _random(33, 10, 4)
  n, c = logits.shape
  probs = np_softmax(np.float64(logits) / temperature)
  weights = 1 + np.exp(-np_tllib_entropy(probs))
  weights = n * weights / weights.sum()
  confusion = np.zeros((c, c))
  for i in range(n):
    confusion += weights[i] * np.outer(probs[i], probs[i])
  confusion = confusion / confusion.sum(axis=1, keepdims=True)  # per class, as in the paper
  expected = (confusion.sum() - np.trace(confusion)) / c
  np.testing.assert_allclose(L.mcc(logits, temperature=temperature), expected, rtol=RTOL)


def test_mdd_matches_numpy_and_gives_main_head_no_gradient():
  y_s, y_s_adv, y_t, y_t_adv = (2 * _random(34 + i, 8, 5) for i in range(4))
  source_ce, target_log = [], []
  for i in range(8):
    log_probs = np.float64(y_s_adv[i]) - scipy.special.logsumexp(np.float64(y_s_adv[i]))
    source_ce.append(-log_probs[np.argmax(y_s[i])])
    p = np_softmax(y_t_adv[i])[np.argmax(y_t[i])]
    target_log.append(np.log(min(1 - p + 1e-6, 1.0)))
  expected = -4 * np.mean(source_ce) + np.mean(target_log)
  mdd = functools.partial(L.mdd, margin=4.0)
  value, grads = jax.jit(jax.value_and_grad(mdd, argnums=(0, 1, 2, 3)))(y_s, y_s_adv, y_t,
                                                                         y_t_adv)
  np.testing.assert_allclose(value, expected, rtol=RTOL)
  assert np.all(np.asarray(grads[0]) == 0) and np.all(np.asarray(grads[2]) == 0)
  # shift_log: log(min(x + 1e-6, 1)), finite where the adversarial head is
  # certain of the main head's class (1 - p rounds to 0 in float32).
  np.testing.assert_allclose(L.shift_log(_f32([0.0, 0.5, 1.0])),
                             [np.log(1e-6), np.log(0.5 + 1e-6), 0.0], rtol=RTOL)
  y_t_adv[0] = y_t_adv[0] + 60 * np.eye(5)[np.argmax(y_t[0])]
  saturated = jax.grad(mdd, argnums=3)(y_s, y_s_adv, y_t, y_t_adv)
  assert np.all(np.isfinite(np.asarray(saturated)))


@pytest.mark.parametrize("k", [1, 2])
def test_bsp_matches_numpy_svd(k):
  source, target = _random(38, 12, 6), _random(39, 9, 6, shift=1.0)
  expected = (np.sum(np.linalg.svd(np.float64(source), compute_uv=False)[:k]**2)
              + np.sum(np.linalg.svd(np.float64(target), compute_uv=False)[:k]**2))
  np.testing.assert_allclose(L.bsp(source, target, k=k), expected, rtol=RTOL)


def test_afn_value_and_gradient():
  features = _random(40, 6, 4, shift=0.5)
  norms = np.linalg.norm(np.float64(features), axis=1)
  value, grad = jax.value_and_grad(lambda f: L.adaptive_feature_norm(f, delta=1.5))(features)
  np.testing.assert_allclose(value, 1.5**2, rtol=RTOL)
  # d/df_i mean((|f_i| - sg(|f_i|) - delta)^2) = -2 delta f_i / (n |f_i|)
  np.testing.assert_allclose(grad, -2 * 1.5 * features / (6 * norms[:, None]), rtol=RTOL)
  np.testing.assert_allclose(L.adaptive_feature_norm(features, radius=2.0),
                             np.mean((norms - 2.0)**2), rtol=RTOL)
  zero_row = features.copy()
  zero_row[0] = 0.0
  assert np.all(np.isfinite(jax.grad(L.adaptive_feature_norm)(zero_row)))


def test_entropy_matches_numpy():
  logits = 3 * _random(41, 7, 5)
  probs = np_softmax(logits)
  np.testing.assert_allclose(L.entropy(_f32(probs)), np_tllib_entropy(probs), rtol=RTOL)
  np.testing.assert_allclose(L.entropy_loss(logits), np_tllib_entropy(probs).mean(), rtol=RTOL)
  exact = -np.sum(probs * np.log(probs), axis=1).mean()
  np.testing.assert_allclose(L.entropy_loss(logits, epsilon=0.0), exact, rtol=RTOL)
  saturated = _f32([[1000.0, 0.0, -1000.0]])
  assert np.isfinite(jax.grad(lambda z: L.entropy_loss(z, epsilon=0.0))(saturated)).all()


# ----------------------------------------------------------------------------
# Every loss: jit, degenerate batches, sharded batches.
# ----------------------------------------------------------------------------

_DIM, _CLASSES = 6, 4
_DISCRIMINATOR_WEIGHTS = _random(50, _DIM)
_CONDITIONAL_WEIGHTS = _random(51, _DIM * _CLASSES)
_RANDOM_MAP = tuple(np.asarray(m) for m in L.init_randomized_map(jax.random.key(3), _DIM,
                                                                  _CLASSES, output_dim=32))


def _dann(source, target):
  coeff = L.warm_start_coeff(300)
  reversed_s = L.gradient_reversal(source, coeff)
  reversed_t = L.gradient_reversal(target, coeff)
  return L.domain_adversarial_loss(reversed_s @ _DISCRIMINATOR_WEIGHTS,
                                   reversed_t @ _DISCRIMINATOR_WEIGHTS)


def _cdan(features_s, logits_s, features_t, logits_t, randomized=False):
  n = features_s.shape[0]
  features = jnp.concatenate([features_s, features_t])
  probs = jax.lax.stop_gradient(jax.nn.softmax(jnp.concatenate([logits_s, logits_t])))
  if randomized:
    mapped = L.randomized_multilinear_map(features, probs, *_RANDOM_MAP)
    discriminator = _RANDOM_MAP[0].T[:, :1]
  else:
    mapped = L.multilinear_map(features, probs)
    discriminator = _CONDITIONAL_WEIGHTS[:, None]
  d = (L.gradient_reversal(mapped) @ discriminator)[:, 0]
  weights = L.entropy_weights(probs)
  return L.domain_adversarial_loss(d[:n], d[n:], source_weights=weights[:n],
                                   target_weights=weights[n:])


def _jmmd(features_s, logits_s, features_t, logits_t, linear=False):
  return L.jmmd([features_s, jax.nn.softmax(logits_s)], [features_t, jax.nn.softmax(logits_t)],
                kernels=(L.kernel_bank(ALPHAS), (GaussianKernel(sigma=0.92),)), linear=linear)


# name -> (loss, input kinds): "f" features (n, _DIM), "l" logits (n, _CLASSES).
LOSS_CASES = {
    "mk_mmd": (lambda s, t: L.mk_mmd(s, t, alphas=ALPHAS), "ff"),
    "mk_mmd_linear": (lambda s, t: L.mk_mmd(s, t, alphas=ALPHAS, linear=True), "ff"),
    "mk_mmd_dan_weights": (lambda s, t: L.mk_mmd(
        s, t, alphas=ALPHAS, kernel_weights=L.dan_kernel_weights(s, t, alphas=ALPHAS)),
                           "ff"),
    "mmd_fixed_sigma": (lambda s, t: L.mmd(s, t, sigma=2.0), "ff"),
    "jmmd": (_jmmd, "flfl"),
    "jmmd_linear": (lambda *a: _jmmd(*a, linear=True), "flfl"),
    "coral": (L.coral, "ff"),
    "coral_paper": (lambda s, t: L.coral(s, t, form="paper"), "ff"),
    "cmd": (lambda s, t: L.cmd(jax.nn.sigmoid(s), jax.nn.sigmoid(t)), "ff"),
    "dann": (_dann, "ff"),
    "cdan_e": (_cdan, "flfl"),
    "cdan_e_randomized": (lambda *a: _cdan(*a, randomized=True), "flfl"),
    "mcc": (lambda l: L.mcc(l, temperature=2.5), "l"),
    "mdd": (lambda *a: L.mdd(*a, margin=4.0), "llll"),
    "bsp": (L.bsp, "ff"),
    "afn": (L.adaptive_feature_norm, "f"),
    "afn_hard": (lambda f: L.adaptive_feature_norm(f, radius=3.0), "f"),
    "entropy": (L.entropy_loss, "l"),
}


def _inputs(kinds, n, seed, identical=False):
  arrays = []
  for i, kind in enumerate(kinds):
    width = _DIM if kind == "f" else _CLASSES
    if identical:
      row = _random(seed, 1, width)
      arrays.append(np.repeat(row, n, axis=0))
    else:
      arrays.append(_random(seed + i, n, width, shift=0.3 * i))
  return arrays


@jax.jit
def _values_and_grads(inputs):
  """Value and input gradients of every case in `inputs` (name -> arrays), in
  one program: a compile per case would dominate the test time."""
  results = {}
  for name, arrays in inputs.items():
    loss, _ = LOSS_CASES[name]
    results[name] = jax.value_and_grad(loss, argnums=tuple(range(len(arrays))))(*arrays)
  return results


def _case_inputs(n, seed, identical=False, names=tuple(sorted(LOSS_CASES))):
  return {name: _inputs(LOSS_CASES[name][1], n, seed, identical) for name in names}


@pytest.mark.parametrize("batch", ["identical_rows", "batch_of_2"])
def test_every_loss_jits_and_is_finite_on_degenerate_batches(batch):
  if batch == "identical_rows":
    inputs = _case_inputs(16, seed=60, identical=True)
  else:
    # DAN's weights need two quad-tuples (n >= 4) and say so.
    inputs = _case_inputs(2, seed=61, names=tuple(n for n in sorted(LOSS_CASES)
                                                 if n != "mk_mmd_dan_weights"))
  results = _values_and_grads(inputs)
  not_finite = [name for name, (value, grads) in results.items()
                if not (np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads))]
  assert not not_finite, f"non-finite value or gradient: {not_finite}"


@pytest.fixture(scope="module")
def one_device_results():
  inputs = _case_inputs(16, seed=70)
  return inputs, jax.tree.map(np.asarray, _values_and_grads(inputs))


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_every_loss_same_on_one_and_eight_devices(one_device_results, axis_type):
  inputs, expected = one_device_results
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  sharded_inputs = jax.tree.map(lambda x: jax.device_put(x, sharding), inputs)
  assert sharded_inputs["mk_mmd"][0].sharding.spec == PartitionSpec("data")
  with jax.set_mesh(mesh):
    results = _values_and_grads(sharded_inputs)
  for name, (value, grads) in results.items():
    expected_value, expected_grads = expected[name]
    # Estimates like MMD are differences of O(1) kernel averages: absolute slack.
    np.testing.assert_allclose(value, expected_value, rtol=RTOL, atol=5e-6, err_msg=name)
    for grad, expected_grad in zip(grads, expected_grads):
      scale = np.abs(expected_grad).max()
      np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                                 err_msg=name)
