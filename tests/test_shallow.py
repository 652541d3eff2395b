"""Tests for tljax.shallow: parity with the numpy references, adaptation gains,
the balance factor and A-distance, the CLI and the t-SNE plot.

Problems are small (n <= 120, d <= 14) so the file runs in well under two
minutes on two CPU cores. Embeddings are compared through quantities that do
not depend on the arbitrary signs/rotations of eigenvectors: pairwise distances
of the joint (source + target) embedding, projectors, kernels.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import distance

from benchmarks import shallow_timing
from tljax import shallow
from tljax.shallow import analysis
from tljax.shallow import experiment
from tljax.shallow import reference


def gaussian_mixture(seed, n=80, d=12, num_classes=3, separation=2.0, offset=0.0):
  """Labelled source and target samples; the target is translated by `offset * N(0, I)`."""
  rng = np.random.default_rng(seed)
  means = rng.standard_normal((num_classes, d)) * separation
  source_labels = np.arange(n) % num_classes
  target_labels = rng.permutation(np.arange(n) % num_classes)
  source = means[source_labels] + rng.standard_normal((n, d))
  target = (means[target_labels] + rng.standard_normal((n, d))
            + offset * rng.standard_normal(d))
  return source, source_labels, target, target_labels


def stretched_mixture(seed, n=120, d=10, radius=3.0, angle_deg=85.0, stretch=12.0):
  """Three classes on a triangle; the target is stretched 12x along an oblique
  direction of the class plane (a covariance shift that CORAL can undo)."""
  rng = np.random.default_rng(seed)
  angles = 2 * np.pi * np.arange(3) / 3
  means = np.zeros((3, d))
  means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
  source_labels = np.arange(n) % 3
  target_labels = rng.permutation(np.arange(n) % 3)
  source = means[source_labels] + rng.standard_normal((n, d))
  target = means[target_labels] + rng.standard_normal((n, d))
  direction = np.zeros(d)
  direction[:2] = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
  stretch_matrix = np.eye(d) + (stretch - 1) * np.outer(direction, direction)
  # Scale up so CORAL's identity regulariser is small next to the covariances.
  return 10 * source, source_labels, 10 * target @ stretch_matrix, target_labels


def joint_distances(source_embedding, target_embedding):
  stacked = np.vstack([source_embedding, target_embedding]).astype(np.float64)
  return distance.cdist(stacked, stacked)


def accuracy(predictions, labels):
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


@pytest.fixture(scope="module")
def problem():
  return gaussian_mixture(0, offset=1.0)


# ---------------------------------------------------------------------------
# Parity with the numpy references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, dim", [("primal", 5), ("linear", 5), ("rbf", 8)])
def test_tca_matches_reference(problem, kernel, dim):
  source, source_labels, target, target_labels = problem
  model = shallow.TCA(dim=dim, kernel=kernel).fit(source, source_labels, target)
  ref_source, ref_target, ref_projection = reference.tca(source, target, dim=dim, kernel=kernel)

  np.testing.assert_allclose(
      joint_distances(model.source_embedding_, model.target_embedding_),
      joint_distances(ref_source, ref_target), atol=2e-4)
  assert model.score(target, target_labels) == accuracy(
      reference.nearest_neighbor(ref_source, source_labels, ref_target), target_labels)
  # New samples go through the same map as the training ones.
  np.testing.assert_allclose(model.transform(target[:7]), model.target_embedding_[:7], atol=1e-5)
  np.testing.assert_allclose(
      joint_distances(model.transform(target[:7]), model.transform(source[:5], "source")),
      joint_distances(
          reference.tca_transform(target[:7], source, target, ref_projection, kernel=kernel),
          reference.tca_transform(source[:5], source, target, ref_projection, kernel=kernel)),
      atol=2e-4)


def test_jda_matches_reference(problem):
  source, source_labels, target, target_labels = problem
  model = shallow.JDA(dim=5, T=3).fit(source, source_labels, target)
  ref_source, ref_target, ref_history, _ = reference.jda(source, source_labels, target,
                                                         dim=5, T=3)
  np.testing.assert_allclose(
      joint_distances(model.source_embedding_, model.target_embedding_),
      joint_distances(ref_source, ref_target), atol=2e-4)
  np.testing.assert_array_equal(model.pseudo_labels_, ref_history)
  assert model.score(target, target_labels) == accuracy(ref_history[-1], target_labels)


def test_bda_fixed_mu_matches_reference_and_jda_is_bda_half(problem):
  source, source_labels, target, _ = problem
  model = shallow.BDA(dim=5, mu=0.3, T=3).fit(source, source_labels, target)
  ref_source, ref_target, ref_history, ref_mu, _ = reference.bda(
      source, source_labels, target, dim=5, mu=0.3, T=3)
  np.testing.assert_allclose(
      joint_distances(model.source_embedding_, model.target_embedding_),
      joint_distances(ref_source, ref_target), atol=2e-4)
  np.testing.assert_array_equal(model.pseudo_labels_, ref_history)
  np.testing.assert_allclose(model.mu_history_, ref_mu)

  # M is Frobenius-normalised, so M0 + sum M_c and 0.5 (M0 + sum M_c) agree.
  jda = shallow.JDA(dim=5, T=3).fit(source, source_labels, target)
  bda_half = shallow.BDA(dim=5, mu=0.5, T=3).fit(source, source_labels, target)
  np.testing.assert_allclose(jda.source_embedding_, bda_half.source_embedding_, atol=1e-5)
  np.testing.assert_array_equal(jda.pseudo_labels_, bda_half.pseudo_labels_)


def test_coral_matches_reference(problem):
  source, source_labels, target, target_labels = problem
  model = shallow.CORAL().fit(source, source_labels, target)
  expected = reference.coral(source, target)
  np.testing.assert_allclose(model.source_embedding_, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(model.target_embedding_, target, rtol=1e-6)
  assert model.score(target, target_labels) == accuracy(
      reference.nearest_neighbor(expected, source_labels, target), target_labels)


def test_subspace_alignment_matches_reference(problem):
  source, source_labels, target, target_labels = problem
  model = shallow.SA(dim=5).fit(source, source_labels, target)
  ref_source, ref_target = reference.subspace_alignment(source, target, dim=5)
  np.testing.assert_allclose(
      joint_distances(model.source_embedding_, model.target_embedding_),
      joint_distances(ref_source, ref_target), rtol=1e-4, atol=1e-3)
  assert model.score(target, target_labels) == accuracy(
      reference.nearest_neighbor(ref_source, source_labels, ref_target), target_labels)


def test_gfk_matches_reference(problem):
  source, source_labels, target, target_labels = problem
  model = shallow.GFK(dim=4).fit(source, source_labels, target)
  kernel = reference.gfk_kernel(source, target, dim=4)
  np.testing.assert_allclose(model.kernel_, kernel, atol=1e-5)
  # Euclidean distances of the embedding are the GFK distances.
  np.testing.assert_allclose(
      distance.cdist(model.source_embedding_, model.target_embedding_, "sqeuclidean"),
      reference.gfk_squared_distances(kernel, source, target), rtol=1e-4, atol=1e-3)
  assert model.score(target, target_labels) == accuracy(
      reference.gfk_predict(kernel, source, source_labels, target), target_labels)


def _top_principal_directions(x, dim):
  _, _, right = np.linalg.svd(x - x.mean(0), full_matrices=False)
  return right[:dim].T


def test_gfk_kernel_is_the_integral_along_the_geodesic(problem):
  # Independent of both implementations: Edelman et al.'s Grassmann geodesic
  # Y(t) = Ps V cos(t Theta) + U sin(t Theta), with U tan(Theta) V^T the SVD of
  # (I - Ps Ps^T) Pt (Ps^T Pt)^-1, integrated by Gauss-Legendre quadrature.
  source, source_labels, target, _ = problem
  dim = 4
  model = shallow.GFK(dim=dim).fit(source, source_labels, target)
  source_basis = _top_principal_directions(source, dim)
  target_basis = _top_principal_directions(target, dim)
  tangent = ((np.eye(len(source_basis)) - source_basis @ source_basis.T) @ target_basis
             @ np.linalg.inv(source_basis.T @ target_basis))
  left, tangents, right_t = np.linalg.svd(tangent, full_matrices=False)
  angles = np.arctan(tangents)
  nodes, weights = np.polynomial.legendre.leggauss(40)
  integral = 0
  for node, weight in zip((nodes + 1) / 2, weights / 2):
    point = (source_basis @ right_t.T * np.cos(node * angles) + left * np.sin(node * angles))
    integral = integral + weight * point @ point.T
  np.testing.assert_allclose(model.kernel_, integral, atol=1e-5)


def test_float64_when_x64_is_enabled(problem):
  source, source_labels, target, _ = problem
  with jax.enable_x64(True):
    model = shallow.TCA(dim=8, kernel="rbf").fit(source, source_labels, target)
    gfk = shallow.GFK(dim=4).fit(source, source_labels, target)
  assert model.source_embedding_.dtype == np.float64
  ref_source, ref_target, _ = reference.tca(source, target, dim=8, kernel="rbf")
  np.testing.assert_allclose(
      joint_distances(model.source_embedding_, model.target_embedding_),
      joint_distances(ref_source, ref_target), atol=1e-9)
  np.testing.assert_allclose(gfk.kernel_, reference.gfk_kernel(source, target, dim=4),
                             atol=1e-10)


# ---------------------------------------------------------------------------
# Adaptation helps where it should
# ---------------------------------------------------------------------------


def test_tca_sa_jda_beat_no_adaptation_on_translated_target():
  source, source_labels, target, target_labels = gaussian_mixture(
      0, n=100, d=10, separation=1.5, offset=3.0)
  baseline = shallow.NoAdaptation().fit(source, source_labels, target).score(target, target_labels)
  assert baseline < 0.75
  for model in (shallow.TCA(dim=5), shallow.SA(dim=5), shallow.JDA(dim=5, T=5)):
    adapted = model.fit(source, source_labels, target).score(target, target_labels)
    assert adapted > baseline + 0.15, (model, adapted, baseline)


def test_coral_beats_no_adaptation_on_stretched_target():
  source, source_labels, target, target_labels = stretched_mixture(0)
  baseline = shallow.NoAdaptation().fit(source, source_labels, target).score(target, target_labels)
  adapted = shallow.CORAL().fit(source, source_labels, target).score(target, target_labels)
  assert adapted > baseline + 0.07, (adapted, baseline)


# ---------------------------------------------------------------------------
# BDA's balance factor and the proxy A-distance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("global_distance, class_distances", [
    (1.2, [0.3, 0.5, 0.1]),
    (0.0, [0.4, 0.2]),
    (1.5, [0.0, 0.0]),
    (0.0, [0.0]),
    (-0.2, [0.3, -0.1]),
    (2.0, [2.0] * 10),
])
def test_balance_factor_matches_reference(global_distance, class_distances):
  mu = shallow.balance_factor(global_distance, class_distances)
  assert 0.0 <= mu <= 1.0
  assert mu == pytest.approx(reference.balance_factor(global_distance, class_distances))


def test_bda_auto_mu_matches_reference(problem):
  source, source_labels, target, target_labels = problem
  model = shallow.BDA(dim=5, mu="auto", T=3, seed=1).fit(source, source_labels, target)
  assert model.mu_history_[0] == 0.0
  assert np.all((model.mu_history_ >= 0) & (model.mu_history_ <= 1))
  # Same A-distance function on both sides, so the estimates must agree.
  _, _, ref_history, ref_mu, _ = reference.bda(
      source, source_labels, target, dim=5, mu="auto", T=3, seed=1,
      distance_fn=analysis.proxy_a_distance)
  np.testing.assert_allclose(model.mu_history_, ref_mu, atol=0.05)
  assert model.score(target, target_labels) == accuracy(ref_history[-1], target_labels)


def test_proxy_a_distance_extremes():
  rng = np.random.default_rng(0)
  same = rng.standard_normal((600, 5))
  assert abs(shallow.proxy_a_distance(same[:300], same[300:], seed=0)) < 0.3
  far = rng.standard_normal((300, 5)) + 10.0
  assert shallow.proxy_a_distance(same[:300], far, seed=0) > 1.9


def test_mmd_grows_with_shift():
  rng = np.random.default_rng(0)
  samples = rng.standard_normal((400, 5))
  same = shallow.mmd_between(samples[:200], samples[200:])
  shifted = shallow.mmd_between(samples[:200], samples[200:] + 1.0)
  assert abs(same) < 0.02 < shifted


# ---------------------------------------------------------------------------
# Estimator plumbing, CLI, plot
# ---------------------------------------------------------------------------


def test_logreg_classifier_and_original_label_values(problem):
  source, source_labels, target, target_labels = problem
  names = np.array(["cat", "dog", "emu"])
  model = shallow.SA(dim=5, classifier="logreg").fit(source, names[source_labels], target)
  predictions = model.predict(target)
  assert set(predictions) <= set(names)
  assert model.score(target, names[target_labels]) > 0.8
  source_z, target_z = model.fit_transform(source, names[source_labels], target)
  assert source_z.shape == target_z.shape == (len(source), 5)


def test_invalid_arguments(problem):
  source, source_labels, target, _ = problem
  with pytest.raises(ValueError, match="dim"):
    shallow.TCA(dim=50).fit(source, source_labels, target)
  with pytest.raises(ValueError, match="kernel"):
    shallow.TCA(dim=5, kernel="poly").fit(source, source_labels, target)
  with pytest.raises(ValueError, match="classifier"):
    shallow.CORAL(classifier="svm")
  with pytest.raises(ValueError, match="mu"):
    shallow.BDA(mu=1.5)
  with pytest.raises(RuntimeError, match="not fitted"):
    shallow.GFK().transform(target)


def test_cli_writes_reports(tmp_path):
  source, source_labels, target, target_labels = gaussian_mixture(1, n=40, d=12, offset=1.0)
  features = tmp_path / "features.npz"
  np.savez(features, source_features=source, source_labels=source_labels,
           target_features=target, target_labels=target_labels)
  out = tmp_path / "out"
  subprocess.run(
      [sys.executable, "-m", "tljax.shallow", f"--features={features}", f"--out={out}",
       "--methods=tca,jda,bda_auto,coral,sa,gfk", "--seeds=2", "--dim=4", "--T=2"],
      check=True, capture_output=True, timeout=300, env=dict(os.environ))
  report = json.loads((out / "shallow_results.json").read_text())
  assert set(report) >= {"config", "data", "environment", "results"}
  assert list(report["results"]) == ["none", "tca", "jda", "bda_auto", "coral", "sa", "gfk"]
  for method, result in report["results"].items():
    assert set(result) >= {"accuracy_1nn", "accuracy_logreg", "wall_time_s", "runs",
                           "proxy_a_distance", "mmd"}, method
    assert set(result["accuracy_1nn"]) == {"mean", "std", "values"}
    # Each run's accuracy is a count of the target examples over their number.
    for value in result["accuracy_1nn"]["values"]:
      assert value * len(target) == pytest.approx(round(value * len(target))), (method, value)
  # Without adaptation: 1-NN on the raw features (the CLI normalises nothing by default).
  nearest = distance.cdist(target, source).argmin(axis=1)
  assert report["results"]["none"]["accuracy_1nn"]["mean"] == pytest.approx(
      np.mean(source_labels[nearest] == target_labels))
  assert report["results"]["bda_auto"]["runs"] == 2  # randomised: one run per seed
  assert report["results"]["tca"]["runs"] == 1
  assert report["results"]["tca"]["params"]["dim"] == 4
  assert report["data"]["num_source"] == 40
  markdown = (out / "shallow_results.md").read_text()
  assert "| bda_auto |" in markdown
  csv_lines = (out / "shallow_results.csv").read_text().splitlines()
  assert csv_lines[0].startswith("method,accuracy_1nn_mean,accuracy_1nn_std")
  assert len(csv_lines) == 1 + 7


def test_experiment_subsampling_runs_every_seed(tmp_path):
  source, source_labels, target, target_labels = gaussian_mixture(2, n=60, d=12)
  features = tmp_path / "features.npz"
  np.savez(features, source_features=source, source_labels=source_labels,
           target_features=target, target_labels=target_labels)
  report = experiment.run_experiment(features, tmp_path / "out", methods=["coral"],
                                     seeds=2, max_per_domain=50, diagnostics=False)
  assert report["results"]["coral"]["runs"] == 2
  assert len(report["results"]["coral"]["accuracy_1nn"]["values"]) == 2


def test_experiment_l2_normalisation_feeds_every_method(tmp_path):
  source, source_labels, target, target_labels = gaussian_mixture(3, n=50, d=8, offset=0.5)
  rng = np.random.default_rng(0)
  # Per-sample scales that 1-NN on raw features would be fooled by.
  source = source * rng.uniform(0.2, 5.0, (len(source), 1))
  target = target * rng.uniform(0.2, 5.0, (len(target), 1))
  features = tmp_path / "features.npz"
  np.savez(features, source_features=source, source_labels=source_labels,
           target_features=target, target_labels=target_labels)
  report = experiment.run_experiment(features, tmp_path / "out", methods=["coral"], seeds=1,
                                     diagnostics=False, normalize="l2")
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  nearest = distance.cdist(unit(target), unit(source)).argmin(axis=1)
  expected = np.mean(source_labels[nearest] == target_labels)
  assert report["results"]["none"]["accuracy_1nn"]["mean"] == pytest.approx(expected)
  coral = reference.coral(unit(source), unit(target))
  nearest = distance.cdist(unit(target), coral).argmin(axis=1)
  assert report["results"]["coral"]["accuracy_1nn"]["mean"] == pytest.approx(
      np.mean(source_labels[nearest] == target_labels))
  assert report["config"]["normalize"] == "l2"
  with pytest.raises(ValueError, match="unknown normalize='l1'"):
    experiment.run_experiment(features, tmp_path / "bad", normalize="l1")


def test_tsne_plot_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  path = shallow.tsne_plot(rng.standard_normal((30, 6)), rng.standard_normal((25, 6)) + 2,
                           np.arange(30) % 3, np.arange(25) % 3, tmp_path / "tsne.png")
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size[0] > image.size[1] > 100


def test_benchmark_runs_both_sides_on_a_tiny_problem():
  rows = shallow_timing.run_benchmark(n=30, d=12, num_classes=3,
                                      method_names=shallow_timing.ALL_METHODS, dim=4,
                                      gfk_dim=3, iterations=2, reference_iterations=2,
                                      repeats=1, log=lambda line: None)
  assert [row["method"] for row in rows] == list(shallow_timing.ALL_METHODS)
  for row in rows:
    assert {"tljax_warm_s", "reference_s"} <= set(row)
    assert not row["reference_extrapolated"]
    assert row["prediction_agreement"] >= 0.9, row
  assert "| gfk |" in shallow_timing.format_table(rows, "header")
