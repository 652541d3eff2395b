"""Tests for `tljax.ranking` against float64 numpy references written from the
published formulas (per-class loops, direct solves and log-determinants,
`np.cov` and `np.linalg.pinv`), in float32 and float64, plus closed forms
and jit-vs-eager checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tljax import ranking as R

RTOL32 = 1e-4
RTOL64 = 1e-8
SHAPES = [(40, 7, 3), (300, 20, 5), (64, 96, 4), (500, 32, 10)]  # (N, D, classes)


def _data(seed, n, d, num_classes, informative=0.0):
  """Gaussian features, labels covering every class, optional class signal."""
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
  rng.shuffle(labels)
  features = rng.normal(size=(n, d)) + informative * rng.normal(size=(num_classes, d))[labels]
  return features, labels


def _probabilities(seed, n, num_classes, scale=2.0):
  logits = scale * np.random.default_rng(seed).normal(size=(n, num_classes))
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _check(fn, reference, args32, args64, **kwargs):
  """fn in float32 (rel 1e-4) and float64 (rel 1e-8) against a float64 reference."""
  got32 = fn(*args32, **kwargs)
  assert got32.dtype == jnp.float32 and got32.shape == ()
  np.testing.assert_allclose(float(got32), reference, rtol=RTOL32)
  with jax.enable_x64(True):
    got64 = fn(*args64, **kwargs)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(float(got64), reference, rtol=RTOL64)


# ----------------------------------------------------------------------------
# Numpy references.
# ----------------------------------------------------------------------------


def np_logme(features, targets_by_column, max_iterations=11, tolerance=0.01):
  """LogME per You et al. 2021 with TLlib's stopping rule, by direct linear algebra."""
  f = np.asarray(features, np.float64)
  n, d = f.shape
  gram = f.T @ f
  eigenvalues = np.linalg.eigvalsh(gram)
  evidences = []
  for y in targets_by_column:
    y = np.asarray(y, np.float64)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iterations):
      lam = alpha / beta
      gamma = np.sum(eigenvalues / (eigenvalues + lam))
      m = np.linalg.solve(alpha * np.eye(d) + beta * gram, beta * f.T @ y)
      alpha_de = m @ m
      beta_de = np.sum((y - f @ m)**2)
      alpha, beta = gamma / alpha_de, (n - gamma) / beta_de
      if abs(alpha / beta - lam) / lam < tolerance:
        break
    _, log_det = np.linalg.slogdet(alpha * np.eye(d) + beta * gram)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2
                - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * np.log(2 * np.pi))
    evidences.append(evidence / n)
  return float(np.mean(evidences))


def np_logme_classes(features, labels, num_classes):
  return np_logme(features, [(labels == c).astype(np.float64) for c in range(num_classes)])


def np_leep(predictions, labels, num_classes):
  theta = np.asarray(predictions, np.float64)
  n, num_source = theta.shape
  joint = np.zeros((num_classes, num_source))
  for i in range(n):
    joint[labels[i]] += theta[i] / n
  conditional = joint / joint.sum(axis=0, keepdims=True)  # P(y | z)
  total = 0.0
  for i in range(n):
    total += np.log(sum(conditional[labels[i], z] * theta[i, z] for z in range(num_source)))
  return total / n


def np_nce(source_labels, labels):
  n = len(labels)
  pair_counts, source_counts = {}, {}
  for z, y in zip(source_labels, labels):
    pair_counts[(y, z)] = pair_counts.get((y, z), 0) + 1
    source_counts[z] = source_counts.get(z, 0) + 1
  conditional_entropy = 0.0
  for (_, z), count in pair_counts.items():
    conditional_entropy -= count / n * np.log(count / source_counts[z])
  return -conditional_entropy


def np_h_score(features, labels, rcond=1e-15):
  f = np.asarray(features, np.float64)
  class_means = np.zeros_like(f)
  for c in np.unique(labels):
    class_means[labels == c] = f[labels == c].mean(axis=0)
  covariance = np.cov(f, rowvar=False)
  between = np.cov(class_means, rowvar=False)
  return float(np.trace(np.linalg.pinv(covariance, rcond=rcond) @ between))


# ----------------------------------------------------------------------------
# LogME.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,d,num_classes", SHAPES)
def test_logme_matches_reference(n, d, num_classes):
  features, labels = _data(n + d, n, d, num_classes, informative=0.5)
  expected = np_logme_classes(features, labels, num_classes)
  _check(R.logme, expected, (np.float32(features), labels), (features, labels),
         num_classes=num_classes)


def test_logme_regression_matches_reference():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(120, 15))
  targets = features @ rng.normal(size=(15, 3)) + 0.5 * rng.normal(size=(120, 3))
  expected = np_logme(features, targets.T)
  _check(R.logme_regression, expected, (np.float32(features), np.float32(targets)),
         (features, targets))
  np.testing.assert_allclose(R.logme_regression(np.float32(features), np.float32(targets[:, 0])),
                             np_logme(features, targets[:, :1].T), rtol=RTOL32)


def test_logme_stops_like_tllib():
  """The iteration count matters: with the 1% rule disabled the value changes."""
  features, labels = _data(2, 200, 12, 3, informative=0.3)
  columns = [(labels == c).astype(np.float64) for c in range(3)]
  tllib_rule = np_logme(features, columns)
  one_update = np_logme(features, columns, max_iterations=1)
  assert abs(tllib_rule - one_update) > 1e3 * RTOL64 * abs(tllib_rule)
  with jax.enable_x64(True):
    np.testing.assert_allclose(R.logme(features, labels, num_classes=3), tllib_rule, rtol=RTOL64)


@pytest.mark.parametrize("n,d", [(300, 40), (150, 600)])
def test_logme_float32_on_hard_features(n, d):
  """Rank-deficient features (rank 12 in 40 dimensions), and more features
  than samples (F interpolates every label; the fixed point is still moving
  at TLlib's 11th update, so the value depends on every iterate): float32
  must not amplify rounding noise in either."""
  rng = np.random.default_rng(n)
  labels = rng.integers(0, 4, n)
  latent = rng.normal(size=(n, 12)) + rng.normal(size=(4, 12))[labels]
  if d < n:
    features = latent @ rng.normal(size=(12, d))
  else:
    features = np.maximum(latent @ rng.normal(size=(12, d)), 0.0) * rng.uniform(0.1, 5.0, d)
  expected = np_logme_classes(features, labels, 4)
  np.testing.assert_allclose(R.logme(np.float32(features), labels, num_classes=4), expected,
                             rtol=RTOL32)


def test_logme_ranks_informative_features_above_noise():
  n, d, num_classes = 400, 32, 5
  rng = np.random.default_rng(3)
  labels = rng.integers(0, num_classes, n)
  noise = rng.normal(size=(n, d))
  class_directions = rng.normal(size=(num_classes, d))
  scores = [float(R.logme(np.float32(noise + s * class_directions[labels]), labels,
                          num_classes=num_classes)) for s in (0.0, 0.3, 1.0, 3.0)]
  assert all(b > a for a, b in zip(scores, scores[1:])), scores


# ----------------------------------------------------------------------------
# LEEP and NCE.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,num_source,num_classes", [(50, 6, 3), (400, 20, 7), (1000, 100, 10)])
def test_leep_matches_reference(n, num_source, num_classes):
  predictions = _probabilities(n, n, num_source)
  _, labels = _data(n + 1, n, 1, num_classes)
  expected = np_leep(predictions, labels, num_classes)
  _check(R.leep, expected, (np.float32(predictions), labels), (predictions, labels),
         num_classes=num_classes)


def test_leep_with_one_hot_predictions_is_mean_log_likelihood():
  """Deterministic source model: theta_i = e_{z_i}, LEEP = 1/N sum log P(y_i | z_i) = NCE.

  Source classes 5 and 6 are never predicted: their empirical conditional is
  0/0, which must not turn the score into nan.
  """
  rng = np.random.default_rng(4)
  n, num_source, num_classes = 300, 7, 4
  source_labels = rng.integers(0, 5, n)
  labels = (source_labels + (rng.random(n) < 0.3) * rng.integers(0, num_classes, n)) % num_classes
  one_hot = np.eye(num_source)[source_labels]
  counts = np.zeros((num_classes, num_source))
  np.add.at(counts, (labels, source_labels), 1)
  log_likelihood = np.mean(np.log(counts[labels, source_labels] / counts.sum(0)[source_labels]))
  got = R.leep(np.float32(one_hot), labels, num_classes=num_classes)
  np.testing.assert_allclose(got, log_likelihood, rtol=RTOL32)
  np.testing.assert_allclose(got, R.nce(source_labels, labels, num_classes=num_classes,
                                        num_source_classes=num_source), rtol=RTOL32)


@pytest.mark.parametrize("n,num_source,num_classes", [(30, 5, 3), (500, 40, 10), (2000, 345, 31)])
def test_nce_matches_reference(n, num_source, num_classes):
  predictions = _probabilities(n + 2, n, num_source)
  _, labels = _data(n + 3, n, 1, num_classes)
  expected = np_nce(predictions.argmax(axis=1), labels)
  _check(R.nce, expected, (np.float32(predictions), labels), (predictions, labels),
         num_classes=num_classes)
  got_from_labels = R.nce(predictions.argmax(axis=1), labels, num_classes=num_classes,
                          num_source_classes=num_source)
  np.testing.assert_allclose(got_from_labels, expected, rtol=RTOL32)


def test_nce_closed_forms():
  rng = np.random.default_rng(5)
  source_labels = rng.integers(0, 12, 500)
  # The target label is a function of the source label: no uncertainty left.
  labels = (source_labels * 7 + 3) % 5
  assert float(R.nce(source_labels, labels, num_classes=5, num_source_classes=12)) == 0.0
  # A constant source label: H(Y | Z) = H(Y).
  labels = rng.integers(0, 4, 500)
  frequencies = np.bincount(labels) / 500
  np.testing.assert_allclose(
      R.nce(np.zeros(500, np.int32), labels, num_classes=4, num_source_classes=3),
      np.sum(frequencies * np.log(frequencies)), rtol=RTOL32)


def test_nce_needs_num_source_classes_for_integer_labels():
  with pytest.raises(ValueError, match="num_source_classes"):
    R.nce(np.zeros(4, np.int32), np.zeros(4, np.int32), num_classes=2)


# ----------------------------------------------------------------------------
# H-score.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,d,num_classes", SHAPES[:2] + [(500, 32, 10), (2000, 256, 10)])
def test_h_score_matches_reference(n, d, num_classes):
  features, labels = _data(n * d, n, d, num_classes, informative=0.4)
  features = features * np.random.default_rng(0).uniform(0.1, 10.0, d)  # unequal scales
  expected = np_h_score(features, labels)
  _check(R.h_score, expected, (np.float32(features), labels), (features, labels),
         num_classes=num_classes)


def test_h_score_rank_deficient_covariance_uses_the_pseudo_inverse():
  """Two copies of a column (and one column that is a sum of two others) leave
  the pseudo-inverse score unchanged; in float32 the null directions must be
  cut, not inverted."""
  features, labels = _data(6, 200, 10, 4, informative=0.5)
  extended = np.concatenate(
      [features, features[:, :2], features[:, 3:4] + features[:, 5:6]], axis=1)
  expected = np_h_score(features, labels)
  np.testing.assert_allclose(np_h_score(extended, labels), expected, rtol=1e-6)
  _check(R.h_score, expected, (np.float32(extended), labels), (extended, labels), num_classes=4)


def test_h_score_more_features_than_samples():
  features, labels = _data(7, 30, 50, 3, informative=1.0)
  expected = np_h_score(features, labels)
  with jax.enable_x64(True):
    np.testing.assert_allclose(R.h_score(features, labels, num_classes=3), expected, rtol=1e-6)
  # cov(f) has rank N - 1 = 29 and the class means span all of it: H = C - 1.
  np.testing.assert_allclose(R.h_score(np.float32(features), labels, num_classes=3), 2.0,
                             rtol=RTOL32)


def test_h_score_invariances_and_closed_form():
  features, labels = _data(8, 300, 16, 5, informative=0.7)
  base = float(R.h_score(np.float32(features), labels, num_classes=5))
  rng = np.random.default_rng(9)
  scaled = features * rng.uniform(0.01, 100.0, 16)
  mixed = features @ rng.normal(size=(16, 16)) + 5.0
  for transformed in (scaled, mixed, 1e3 * features):
    np.testing.assert_allclose(R.h_score(np.float32(transformed), labels, num_classes=5), base,
                               rtol=RTOL32)
  # One-hot class features: E[f | y] = f, so H = rank cov(f) = C - 1 (pinv needed).
  one_hot = np.float32(np.eye(5)[labels])
  np.testing.assert_allclose(R.h_score(one_hot, labels, num_classes=5), 4.0, rtol=RTOL32)
  # A class in range without examples contributes nothing (as in TLlib).
  np.testing.assert_allclose(R.h_score(np.float32(features), labels, num_classes=7), base,
                             rtol=1e-6)


# ----------------------------------------------------------------------------
# Jit, eager, dtypes.
# ----------------------------------------------------------------------------


def test_jitted_equals_eager():
  features, labels = _data(10, 120, 9, 4, informative=0.5)
  features = np.float32(features)
  predictions = np.float32(_probabilities(11, 120, 6))
  targets = features[:, :2] + np.float32(np.random.default_rng(12).normal(size=(120, 2)))
  calls = [
      lambda: R.logme(features, labels, num_classes=4),
      lambda: R.logme_regression(features, targets),
      lambda: R.leep(predictions, labels, num_classes=4),
      lambda: R.nce(predictions, labels, num_classes=4),
      lambda: R.h_score(features, labels, num_classes=4),
  ]
  for call in calls:
    jitted = call()
    with jax.disable_jit():
      eager = call()
    assert jitted.dtype == eager.dtype == jnp.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-5)


def test_bfloat16_inputs_are_promoted():
  features, labels = _data(12, 100, 8, 3, informative=0.5)
  low = jnp.asarray(features, jnp.bfloat16)
  got = R.h_score(low, labels, num_classes=3)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_h_score(np.asarray(low, np.float64), labels), rtol=RTOL32)
  assert math.isfinite(float(R.logme(low, labels, num_classes=3)))
