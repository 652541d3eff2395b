"""Tests for `tljax.validators`: numpy references (loops over rows, numpy's
SVD, the DEV formula with `np.cov` as the authors write it), closed forms
(SND of identical or clustered predictions, BNM's maximum, the identities of
the DEV control variate), a well-specified density-ratio problem, IWCV's
unbiasedness, scipy's Spearman, sklearn's logistic regression, selection rules
and jit-vs-eager."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import LogisticRegression

from tljax import validators as V

RTOL32 = 1e-4
RTOL64 = 1e-8


def _logits(seed, n, num_classes, scale=3.0):
  return np.random.default_rng(seed).normal(size=(n, num_classes)) * scale


def _mask(seed, n, fraction=0.7):
  mask = np.random.default_rng(seed).random(n) < fraction
  mask[0] = True
  return mask


def _check(fn, reference, args32, args64, **kwargs):
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


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def np_entropy(p):
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def np_snd(values, temperature=0.05, softmax=True):
  x = np_softmax(values) if softmax else np.asarray(values, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  n = len(x)
  total = 0.0
  for i in range(n):
    similarities = np.array([x[i] @ x[j] for j in range(n) if j != i]) / temperature
    p = np.exp(similarities - similarities.max())
    total += np_entropy(p / p.sum())
  return total / n


def np_dev(weights, losses):
  """The DEV formula as in the authors' code (`np.cov` and `ddof=1`)."""
  weights, losses = np.float64(weights), np.float64(losses)
  weighted = weights * losses
  covariance = np.cov(np.stack([weighted, weights]))[0, 1]
  eta = -covariance / np.var(weights, ddof=1)
  return np.mean(weighted) + eta * np.mean(weights) - eta


# ----------------------------------------------------------------------------
# Accuracy, entropy, BNM.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,num_classes", [(50, 3), (2000, 10), (300, 345)])
def test_target_entropy_and_source_accuracy_match_numpy(n, num_classes):
  logits = _logits(n, n, num_classes)
  labels = np.random.default_rng(n).integers(0, num_classes, n)
  _check(V.target_entropy, np.mean(np_entropy(np_softmax(logits))), (np.float32(logits),),
         (logits,))
  mask = _mask(n + 1, n)
  np.testing.assert_allclose(V.target_entropy(np.float32(logits), mask=mask),
                             np.mean(np_entropy(np_softmax(logits[mask]))), rtol=RTOL32)
  accuracy = np.mean(logits.argmax(1) == labels)
  np.testing.assert_allclose(V.source_accuracy(np.float32(logits), labels), accuracy, rtol=1e-6)
  np.testing.assert_allclose(V.source_accuracy(np.float32(logits), labels, mask=mask),
                             np.mean(logits[mask].argmax(1) == labels[mask]), rtol=1e-6)


def test_target_entropy_extremes():
  np.testing.assert_allclose(V.target_entropy(np.zeros((5, 7), np.float32)), math.log(7),
                             rtol=1e-6)
  confident = np.float32(np.eye(4)[[0, 1, 2, 3, 1]] * 200.0)
  assert float(V.target_entropy(confident)) == 0.0


@pytest.mark.parametrize("n,num_classes", [(50, 3), (2000, 10), (700, 345), (20, 64)])
def test_bnm_matches_numpy_svd(n, num_classes):
  logits = _logits(n + 5, n, num_classes)
  expected = np.linalg.svd(np_softmax(logits), compute_uv=False).sum() / n
  _check(V.bnm_score, expected, (np.float32(logits),), (logits,))
  mask = _mask(n, n)
  np.testing.assert_allclose(
      V.bnm_score(np.float32(logits), mask=mask),
      np.linalg.svd(np_softmax(logits[mask]), compute_uv=False).sum() / mask.sum(), rtol=RTOL32)


def test_bnm_closed_forms():
  # One-hot rows spread evenly over C classes: singular values sqrt(n / C), the maximum.
  n, num_classes = 60, 6
  balanced = np.float32(np.eye(num_classes)[np.arange(n) % num_classes] * 100.0)
  np.testing.assert_allclose(V.bnm_score(balanced), math.sqrt(num_classes / n), rtol=RTOL32)
  # Identical rows p: rank one, ||1 p^T||_* = sqrt(n) |p|.
  row = _logits(1, 1, num_classes)
  identical = np.float32(np.repeat(row, n, axis=0))
  p = np_softmax(row)[0]
  np.testing.assert_allclose(V.bnm_score(identical), np.linalg.norm(p) / math.sqrt(n),
                             rtol=RTOL32)


# ----------------------------------------------------------------------------
# SND.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,num_classes,temperature", [(30, 4, 0.05), (200, 10, 0.05),
                                                       (120, 31, 0.2)])
def test_snd_matches_numpy(n, num_classes, temperature):
  logits = _logits(n + 7, n, num_classes, scale=2.0)
  expected = np_snd(logits, temperature)
  _check(V.snd, expected, (np.float32(logits),), (logits,), temperature=temperature)
  features = np.random.default_rng(n).normal(size=(n, 16))
  np.testing.assert_allclose(V.snd(np.float32(features), softmax=False, temperature=temperature),
                             np_snd(features, temperature, softmax=False), rtol=RTOL32)


def test_snd_identical_predictions_have_maximal_density():
  n = 50
  identical = np.float32(np.repeat(_logits(2, 1, 5), n, axis=0))
  np.testing.assert_allclose(V.snd(identical), math.log(n - 1), rtol=1e-5)
  assert float(V.snd(np.float32(_logits(3, n, 5)))) < math.log(n - 1)


def test_snd_one_hot_clusters_closed_form():
  """Clusters of identical one-hot vectors: within-cluster similarity 1, across 0.

  For a row of a cluster of size m among n: m - 1 neighbours with weight
  a = exp(1 / T), n - m with weight 1.
  """
  temperature = 0.05
  sizes = [10, 20, 30]
  n = sum(sizes)
  vectors = np.float32(np.eye(len(sizes))[np.repeat(np.arange(len(sizes)), sizes)])
  a = math.exp(1 / temperature)
  expected = 0.0
  for m in sizes:
    z = (m - 1) * a + (n - m)
    p_in, p_out = a / z, 1 / z
    row_entropy = -(m - 1) * p_in * math.log(p_in) - (n - m) * p_out * math.log(p_out)
    expected += m * row_entropy / n
  np.testing.assert_allclose(V.snd(vectors, softmax=False, temperature=temperature), expected,
                             rtol=RTOL32)
  # Merging clusters makes neighbourhoods denser.
  merged = np.float32(np.eye(2)[np.repeat([0, 0, 1], sizes)])
  assert float(V.snd(merged, softmax=False)) > expected


def test_snd_mask_and_blocks():
  n = 70
  logits = np.float32(_logits(4, n, 6))
  mask = _mask(5, n)
  expected = float(V.snd(logits[mask]))
  np.testing.assert_allclose(V.snd(logits, mask=mask), expected, rtol=1e-5)
  # Garbage in the padded rows changes nothing.
  padded = logits.copy()
  padded[~mask] = np.nan
  np.testing.assert_allclose(V.snd(padded, mask=mask), expected, rtol=1e-5)
  for block_size in (16, 35, 500):  # a padded last block, exact blocks, one block
    np.testing.assert_allclose(V.snd(logits, mask=mask, block_size=block_size), expected,
                               rtol=1e-5)


# ----------------------------------------------------------------------------
# DEV and IWCV weighting.
# ----------------------------------------------------------------------------


def _weights_and_losses(seed, n):
  rng = np.random.default_rng(seed)
  weights = np.exp(rng.normal(size=n) * 0.7)
  losses = rng.exponential(size=n) * (1 + 0.5 * weights)  # correlated with the weights
  return weights, losses


@pytest.mark.parametrize("n", [5, 100, 2000])
def test_dev_and_iwcv_risks_match_numpy(n):
  weights, losses = _weights_and_losses(n, n)
  _check(V.dev_risk, np_dev(weights, losses), (np.float32(weights), np.float32(losses)),
         (weights, losses))
  _check(V.iwcv_risk, np.mean(weights * losses), (np.float32(weights), np.float32(losses)),
         (weights, losses))
  mask = _mask(n + 1, n)
  np.testing.assert_allclose(V.dev_risk(np.float32(weights), np.float32(losses), mask=mask),
                             np_dev(weights[mask], losses[mask]), rtol=RTOL32)
  np.testing.assert_allclose(V.iwcv_risk(np.float32(weights), np.float32(losses), mask=mask),
                             np.mean(weights[mask] * losses[mask]), rtol=RTOL32)


def test_dev_identities():
  """DEV = mean(L) - b (mean(W) - 1) with b the least-squares slope of L on W:

  - it is the least-squares line of L on W evaluated at W = 1;
  - it equals IWCV whenever mean(W) = 1, whatever the losses;
  - with every loss equal to c, L = c W lies on that line: DEV = c exactly
    (IWCV = c mean(W) is off by the weights' sampling error);
  - L = a + b W exactly gives a + b;
  - constant W: the slope is 0/0; eta = 0 by convention, DEV = IWCV.
  """
  weights, losses = _weights_and_losses(0, 300)
  slope, intercept = np.polyfit(weights, weights * losses, 1)
  with jax.enable_x64(True):
    np.testing.assert_allclose(V.dev_risk(weights, losses), intercept + slope, rtol=RTOL64)
  unit_mean = weights / weights.mean()
  np.testing.assert_allclose(V.dev_risk(np.float32(unit_mean), np.float32(losses)),
                             V.iwcv_risk(np.float32(unit_mean), np.float32(losses)), rtol=RTOL32)
  constant_loss = np.full(300, 0.37, np.float32)
  np.testing.assert_allclose(V.dev_risk(np.float32(weights), constant_loss), 0.37, rtol=RTOL32)
  assert abs(float(V.iwcv_risk(np.float32(weights), constant_loss)) - 0.37) > 1e-3
  affine_losses = (2.0 + 0.5 * weights) / weights  # L = w l = 2 + 0.5 w
  np.testing.assert_allclose(V.dev_risk(np.float32(weights), np.float32(affine_losses)), 2.5,
                             rtol=RTOL32)
  constant_weights = np.full(300, 1.3, np.float32)
  np.testing.assert_allclose(V.dev_risk(constant_weights, np.float32(losses)),
                             1.3 * losses.mean(), rtol=RTOL32)


def test_iwcv_is_unbiased_and_dev_reduces_its_variance():
  """Source N(0, 1), target N(mu, 1), loss l(x) = x^2, true weights
  w(x) = exp(mu x - mu^2 / 2): E_s[w l] = E_t[x^2] = 1 + mu^2."""
  mu, n, draws = 0.5, 200, 4000
  x = jax.random.normal(jax.random.key(0), (draws, n))
  weights = jnp.exp(mu * x - mu**2 / 2)
  losses = x**2
  iwcv = np.asarray(jax.vmap(V.iwcv_risk)(weights, losses), np.float64)
  dev = np.asarray(jax.vmap(V.dev_risk)(weights, losses), np.float64)
  truth = 1 + mu**2
  assert abs(iwcv.mean() - truth) < 4 * iwcv.std() / math.sqrt(draws)
  # DEV's estimated eta costs an O(1/n) bias (about 2% here), well below
  # one draw's error.
  assert abs(dev.mean() - truth) < 0.25 * dev.std()
  assert dev.std() < 0.8 * iwcv.std()


# ----------------------------------------------------------------------------
# The domain classifier and density ratios.
# ----------------------------------------------------------------------------


def test_domain_classifier_matches_sklearn():
  rng = np.random.default_rng(0)
  source = rng.normal(size=(300, 5)) * [1, 2, 3, 0.5, 1]
  target = rng.normal(size=(200, 5)) * [1, 2, 3, 0.5, 1] + [0.5, 0, -1, 0.2, 0]
  l2 = 1e-2
  pooled = np.concatenate([source, target])
  mean, std = pooled.mean(0), pooled.std(0)
  reference = LogisticRegression(C=1 / (l2 * len(pooled)), tol=1e-12, max_iter=10000)
  reference.fit((pooled - mean) / std, np.r_[np.zeros(300), np.ones(200)])
  with jax.enable_x64(True):
    classifier = V.fit_domain_classifier(source, target, l2=l2)
    np.testing.assert_allclose(classifier.weights, reference.coef_[0], rtol=1e-6)
    np.testing.assert_allclose(classifier.bias, reference.intercept_[0], rtol=1e-6)
  classifier = V.fit_domain_classifier(np.float32(source), np.float32(target), l2=l2)
  np.testing.assert_allclose(classifier.weights, reference.coef_[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(V.density_ratio(classifier, np.float32(source)),
                             300 / 200 * np.exp(reference.decision_function((source - mean) / std)),
                             rtol=1e-4)


def test_density_ratio_of_two_gaussians():
  """N(0, I) vs N(mu, I): log p_t / p_s = mu . x - |mu|^2 / 2 is linear, so
  logistic regression is well specified; unequal sample sizes check the
  n_s / n_t factor."""
  rng = np.random.default_rng(1)
  d, n_s, n_t = 3, 6000, 3000
  mu = np.array([0.6, -0.4, 0.0])
  source = np.float32(rng.normal(size=(n_s, d)))
  target = np.float32(rng.normal(size=(n_t, d)) + mu)
  evaluation = np.float32(rng.normal(size=(1000, d)))
  true_log_ratio = evaluation @ mu - mu @ mu / 2
  classifier = V.fit_domain_classifier(source, target, l2=1e-6)
  fitted_log_ratio = np.log(np.asarray(V.density_ratio(classifier, evaluation), np.float64))
  assert np.mean(np.abs(fitted_log_ratio - true_log_ratio)) < 0.05
  assert np.corrcoef(fitted_log_ratio, true_log_ratio)[0, 1] > 0.99
  # The weights average to about 1 over the source distribution.
  assert abs(np.mean(np.exp(fitted_log_ratio)) - 1.0) < 0.05


def test_domain_classifier_ignores_masked_rows_and_constant_features():
  rng = np.random.default_rng(2)
  source = np.float32(rng.normal(size=(80, 4)))
  target = np.float32(rng.normal(size=(60, 4)) + 0.5)
  source[:, 3] = target[:, 3] = 2.0  # constant feature: std 0
  source_mask, target_mask = _mask(3, 80), _mask(4, 60)
  padded_source, padded_target = source.copy(), target.copy()
  padded_source[~source_mask] = 1e6
  padded_target[~target_mask] = np.nan
  masked = V.fit_domain_classifier(padded_source, padded_target, source_mask=source_mask,
                                   target_mask=target_mask)
  subset = V.fit_domain_classifier(source[source_mask], target[target_mask])
  for got, expected in zip(masked, subset):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  assert abs(float(masked.weights[3])) < 1e-6  # the constant feature carries nothing


def test_domain_classifier_separable_domains_stay_finite():
  rng = np.random.default_rng(5)
  source = np.float32(rng.normal(size=(100, 8)))
  target = np.float32(rng.normal(size=(100, 8)) + 10.0)
  classifier = V.fit_domain_classifier(source, target, l2=1e-4)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in classifier)
  assert np.all(np.asarray(classifier.log_odds(target)) > 0)
  assert np.all(np.asarray(classifier.log_odds(source)) < 0)


def _classification_problem(seed, n_s, n_t, shift):
  """Labels `1[x_0 + noise > 0]`; the target is the source moved by `shift` along x_0."""
  rng = np.random.default_rng(seed)

  def sample(n, offset):
    x = rng.normal(size=(n, 4))
    x[:, 0] += offset
    labels = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int32)
    return np.float32(x), labels

  source, source_labels = sample(n_s, 0.0)
  target, target_labels = sample(n_t, shift)
  return source, source_labels, target, target_labels


def test_iwcv_and_dev_estimate_the_target_risk():
  """A model whose boundary sits at x_0 = 1 instead of 0 errs on the source
  mass in (0, 1) and less on the shifted target: the importance-weighted
  estimates land near its target risk, far from the plain source risk."""
  source, source_labels, target, target_labels = _classification_problem(6, 4000, 4000, 1.5)

  def logits_of(x):
    return np.float32(np.stack([np.zeros(len(x)), 3 * (x[:, 0] - 1.0)], axis=1))

  source_logits, target_logits = logits_of(source), logits_of(target)
  target_risk = float(np.mean(V.per_example_loss(target_logits, target_labels)))
  source_risk = float(np.mean(V.per_example_loss(source_logits, source_labels)))
  assert source_risk - target_risk > 0.25
  for l2 in (1e-4, V.DEFAULT_L2):
    iwcv = float(V.iwcv(source_logits, source_labels, source, target, l2=l2))
    dev = float(V.dev(source_logits, source_labels, source, target, l2=l2))
    assert abs(iwcv - target_risk) < 0.1 * (source_risk - target_risk), (l2, iwcv, target_risk)
    assert abs(dev - target_risk) < 0.1 * (source_risk - target_risk), (l2, dev, target_risk)


def test_dev_and_iwcv_compose_their_parts():
  source, source_labels, target, _ = _classification_problem(7, 300, 200, 0.7)
  logits = np.float32(np.random.default_rng(8).normal(size=(300, 2)))
  fit_source = np.float32(np.random.default_rng(9).normal(size=(500, 4)))
  source_mask = _mask(10, 300)
  # Fit on the weighted rows themselves (default), or on a separate source set.
  for loss, fit_kwargs in (("cross_entropy", {}),
                           ("zero_one", {"fit_source_features": fit_source})):
    fit_set = fit_kwargs.get("fit_source_features", source)
    fit_mask = None if fit_kwargs else source_mask
    classifier = V.fit_domain_classifier(fit_set, target, source_mask=fit_mask)
    weights = np.asarray(V.density_ratio(classifier, source), np.float64)[source_mask]
    losses = np.asarray(V.per_example_loss(logits, source_labels, loss), np.float64)[source_mask]
    got_dev = V.dev(logits, source_labels, source, target, source_mask=source_mask, loss=loss,
                    **fit_kwargs)
    got_iwcv = V.iwcv(logits, source_labels, source, target, source_mask=source_mask,
                      loss=loss, **fit_kwargs)
    np.testing.assert_allclose(got_dev, np_dev(weights, losses), rtol=1e-4)
    np.testing.assert_allclose(got_iwcv, np.mean(weights * losses), rtol=1e-4)


def test_per_example_loss_matches_numpy():
  logits = _logits(11, 40, 5)
  labels = np.random.default_rng(11).integers(0, 5, 40)
  np.testing.assert_allclose(V.per_example_loss(np.float32(logits), labels),
                             -np.log(np_softmax(logits)[np.arange(40), labels]), rtol=1e-5)
  np.testing.assert_array_equal(V.per_example_loss(np.float32(logits), labels, "zero_one"),
                                (logits.argmax(1) != labels).astype(np.float32))
  with pytest.raises(ValueError, match="unknown loss"):
    V.per_example_loss(logits, labels, "hinge")


# ----------------------------------------------------------------------------
# Registry, selection, Spearman.
# ----------------------------------------------------------------------------


def _eval_pass(seed, n_s=120, n_t=100, num_classes=5, d=8):
  rng = np.random.default_rng(seed)
  return {
      "source_logits": np.float32(rng.normal(size=(n_s, num_classes))),
      "source_labels": rng.integers(0, num_classes, n_s),
      "source_features": np.float32(rng.normal(size=(n_s, d))),
      "target_logits": np.float32(rng.normal(size=(n_t, num_classes))),
      "target_features": np.float32(rng.normal(size=(n_t, d)) + 0.3),
  }


def test_registry_table():
  assert set(V.VALIDATORS) == {"source_accuracy", "target_entropy", "snd", "snd_features", "bnm",
                               "dev", "iwcv", "source_mae", "oracle"}
  lower = {name for name, v in V.VALIDATORS.items() if not v.higher_is_better}
  assert lower == {"target_entropy", "dev", "iwcv", "source_mae"}
  for name, validator in V.VALIDATORS.items():
    assert validator.name == name
    assert set(validator.inputs) <= set(V.INPUTS)
  assert V.VALIDATORS["oracle"].compute is None
  assert "target_labels" in V.VALIDATORS["oracle"].inputs


def test_each_validator_prefers_the_better_model_in_its_direction():
  """Two models on the same data: one right and confident, its target
  predictions in class clusters; one wrong on the source and scattered on the
  target (no clusters for the density measures to find). Every validator
  scores the first better in the direction the registry declares (a swapped
  direction selects the worst checkpoint)."""
  rng = np.random.default_rng(0)
  n, num_classes, d = 120, 5, 8
  source_labels, target_labels = rng.integers(0, num_classes, n), rng.integers(0, num_classes, n)
  centres = 3.0 * rng.normal(size=(num_classes, d))
  one_hot = lambda labels: np.eye(num_classes, dtype=np.float32)[labels]
  wrong = lambda labels: (labels + 1) % num_classes
  noise = lambda: np.float32(0.1 * rng.normal(size=(n, num_classes)))
  models = {
      "good": {"source_logits": 8 * one_hot(source_labels) + noise(),
               "target_logits": 8 * one_hot(target_labels) + noise(),
               "source_features": np.float32(centres[source_labels] + 0.1 * rng.normal(size=(n, d))),
               "target_features": np.float32(centres[target_labels] + 0.1 * rng.normal(size=(n, d)))},
      "bad": {"source_logits": 0.5 * one_hot(wrong(source_labels)) + noise(),
              "target_logits": np.float32(2.0 * rng.normal(size=(n, num_classes))),
              "source_features": np.float32(3.0 * rng.normal(size=(n, d))),
              "target_features": np.float32(3.0 * rng.normal(size=(n, d)))}}
  scores = {name: V.evaluate({**inputs, "source_labels": source_labels})
            for name, inputs in models.items()}
  assert set(scores["good"]) == set(V.VALIDATORS) - {"oracle", "source_mae"}
  for name in scores["good"]:
    good_is_higher = float(scores["good"][name]) > float(scores["bad"][name])
    assert good_is_higher == V.VALIDATORS[name].higher_is_better, (
        name, float(scores["good"][name]), float(scores["bad"][name]))
  # Regression: outputs near the factors against outputs anywhere.
  factors = np.float32(rng.uniform(size=(n, 2)))
  mae = {name: float(V.evaluate({"source_logits": outputs, "source_labels": factors},
                                names=["source_mae"])["source_mae"])
         for name, outputs in (("good", factors + np.float32(0.01)),
                               ("bad", np.float32(rng.uniform(size=(n, 2)))))}
  assert (mae["good"] > mae["bad"]) == V.VALIDATORS["source_mae"].higher_is_better


def test_evaluate_computes_what_the_inputs_allow():
  inputs = _eval_pass(0)
  results = V.evaluate(inputs)
  assert set(results) == set(V.VALIDATORS) - {"oracle", "source_mae"}
  assert all(r.dtype == jnp.float32 and r.shape == () for r in results.values())
  np.testing.assert_allclose(results["snd"], V.snd(inputs["target_logits"]), rtol=1e-6)
  np.testing.assert_allclose(
      results["dev"], V.dev(inputs["source_logits"], inputs["source_labels"],
                            inputs["source_features"], inputs["target_features"]), rtol=1e-6)
  target_only = {k: inputs[k] for k in ("target_logits",)}
  assert set(V.evaluate(target_only)) == {"target_entropy", "snd", "bnm"}
  mask = _mask(1, 100)
  masked = V.evaluate(dict(inputs, target_mask=mask), names=["snd"])
  np.testing.assert_allclose(masked["snd"], V.snd(inputs["target_logits"][mask]), rtol=1e-5)
  with pytest.raises(KeyError, match="needs"):
    V.evaluate(target_only, names=["dev"])
  with pytest.raises(KeyError, match="evaluation loop"):
    V.evaluate(inputs, names=["oracle"])
  with pytest.raises(KeyError, match="unknown inputs"):
    V.evaluate(dict(inputs, logits=inputs["target_logits"]))


@pytest.mark.parametrize("seed", range(3))
def test_spearman_is_the_closed_form_without_ties(seed):
  """Without ties, rho = 1 - 6 sum(d^2) / (n (n^2 - 1)), d the rank differences
  (Spearman, 1904)."""
  rng = np.random.default_rng(seed)
  n = [3, 11, 50][seed]
  x, y = rng.permutation(n).astype(float), rng.normal(size=n)
  d = np.argsort(np.argsort(x)) - np.argsort(np.argsort(y))
  expected = 1 - 6 * np.sum(d**2) / (n * (n**2 - 1))
  np.testing.assert_allclose(V.spearman(x, y), expected, rtol=1e-12)
  assert V.spearman(x, 2 * x + 1) == pytest.approx(1.0)
  assert V.spearman(x, -x**3) == pytest.approx(-1.0)


def test_spearman_ties_share_their_mean_rank_and_constants_are_nan():
  # x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4): Pearson's r of the ranks.
  ranks_x, ranks_y = np.array([1.5, 1.5, 3, 4]), np.arange(1.0, 5)
  expected = np.corrcoef(ranks_x, ranks_y)[0, 1]
  assert V.spearman([0.0, 0.0, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(expected)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nan without scipy's constant-input warning
    assert math.isnan(V.spearman(np.ones(5), np.arange(5.0)))
    assert math.isnan(V.spearman([1.0], [2.0]))


def test_select_steps_directions_ties_and_gaps():
  records = {
      300: {"snd": 2.0, "target_entropy": 0.5, "dev": math.nan, "oracle": 0.70},
      100: {"snd": 1.0, "target_entropy": 0.5, "dev": 3.0, "oracle": 0.60},
      200: {"snd": 2.0, "target_entropy": 0.9, "dev": 2.0, "oracle": 0.75},
      400: {"snd": 1.5, "oracle": 0.65, "my_score": 4.0, "bnm": None},
  }
  with pytest.raises(KeyError, match="my_score"):
    V.select_steps(records)
  selected = V.select_steps(records, directions={"my_score": False})
  assert selected == {"snd": 200,              # tie of 200 and 300: earliest
                      "target_entropy": 100,   # lower is better, tie of 100 and 300
                      "dev": 200,              # nan skipped
                      "oracle": 200, "my_score": 400}
  # Same answer from (step, values) pairs in any order.
  assert V.select_steps(list(records.items())[::-1], directions={"my_score": False}) == selected
  # Overriding a direction.
  assert V.select_steps(records, directions={"my_score": False, "snd": False})["snd"] == 100
  with pytest.raises(ValueError, match="duplicate"):
    V.select_steps([(1, {"snd": 1.0}), (1, {"snd": 2.0})])


def test_rank_correlations_match_scipy():
  rng = np.random.default_rng(12)
  steps = range(0, 1000, 100)
  oracle = rng.random(len(steps))
  records = {}
  for i, step in enumerate(steps):
    records[step] = {"oracle": float(oracle[i]), "snd": float(oracle[i] + 0.3 * rng.random()),
                     "dev": float(-oracle[i] + 0.3 * rng.random())}
  records[900]["snd"] = math.nan
  del records[800]["dev"]
  correlations = V.rank_correlations(records)
  keep_snd = [s for s in steps if s != 900]
  keep_dev = [s for s in steps if s != 800]
  np.testing.assert_allclose(correlations["snd"], scipy.stats.spearmanr(
      [records[s]["snd"] for s in keep_snd], [records[s]["oracle"] for s in keep_snd]).statistic,
                             rtol=1e-5)
  expected_dev = scipy.stats.spearmanr([records[s]["dev"] for s in keep_dev],
                                       [records[s]["oracle"] for s in keep_dev]).statistic
  np.testing.assert_allclose(correlations["dev"], expected_dev, rtol=1e-5)
  assert expected_dev < 0
  oriented = V.rank_correlations(records, oriented=True)
  np.testing.assert_allclose(oriented["dev"], -expected_dev, rtol=1e-5)
  np.testing.assert_allclose(oriented["snd"], correlations["snd"], rtol=1e-6)
  assert math.isnan(V.rank_correlations({1: {"oracle": 0.5, "snd": 1.0}})["snd"])


# ----------------------------------------------------------------------------
# Jit, eager, dtypes.
# ----------------------------------------------------------------------------


def test_jitted_equals_eager():
  inputs = _eval_pass(13)
  source_mask = _mask(14, 120)
  weights, losses = _weights_and_losses(15, 120)
  calls = {
      "evaluate": lambda: V.evaluate(inputs),  # every validator of the table
      "snd_blocks": lambda: V.snd(inputs["target_logits"], block_size=32),
      "dev_masked": lambda: V.dev(inputs["source_logits"], inputs["source_labels"],
                                  inputs["source_features"], inputs["target_features"],
                                  source_mask=source_mask, loss="zero_one"),
      "dev_risk": lambda: V.dev_risk(np.float32(weights), np.float32(losses)),
      "iwcv_risk": lambda: V.iwcv_risk(np.float32(weights), np.float32(losses)),
  }
  for name, call in calls.items():
    jitted = call()
    with jax.disable_jit():
      eager = call()
    if not isinstance(jitted, dict):
      jitted, eager = {name: jitted}, {name: eager}
    assert set(jitted) == set(eager)
    for key in jitted:
      assert jitted[key].dtype == eager[key].dtype == jnp.float32, key
      np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-5, err_msg=key)


def test_bfloat16_logits_are_promoted():
  logits = jnp.asarray(_logits(16, 30, 4), jnp.bfloat16)
  for fn in (V.target_entropy, V.bnm_score, V.snd):
    assert fn(logits).dtype == jnp.float32


def test_evaluate_picks_the_regression_validators_for_float_labels():
  rng = np.random.default_rng(0)
  predictions = rng.normal(size=(40, 3)).astype(np.float32)
  targets = rng.normal(size=(40, 3)).astype(np.float32)
  results = V.evaluate({"source_logits": predictions, "source_labels": targets})
  assert set(results) == {"source_mae"}
  np.testing.assert_allclose(results["source_mae"], np.abs(predictions - targets).mean(),
                             rtol=1e-6)
