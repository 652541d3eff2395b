"""Measuring domain shift: proxy A-distance, MMD, BDA's balance factor, t-SNE.

These are diagnostics that sit beside the adaptation methods: the CLI reports
them for every method's embedding, and `BDA(mu='auto')` uses
`proxy_a_distance` and `balance_factor` to set its balance between marginal
and conditional alignment. The A-distance and t-SNE run on the host (sklearn);
the MMD is a small jitted JAX function.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model, manifold, model_selection, pipeline, preprocessing

from tljax.shallow import ops


def proxy_a_distance(source_features, target_features, *, seed: int = 0) -> float:
  """Proxy A-distance `2 (1 - 2 err)` between two samples (Ben-David et al. 2007).

  `err` is the held-out error of a linear domain classifier (standardised
  features + L2 logistic regression) trained on a random half of the pooled
  samples, stratified by domain, and tested on the other half. 0 means the
  domains cannot be told apart, 2 that they are linearly separable. The value
  is not clipped: a classifier worse than chance gives a small negative number.

  (The BDA reference code scores a LinearSVC on its own training data, which
  overestimates the distance on small or high-dimensional samples.)

  Args:
    source_features: `(n_s, d)` array.
    target_features: `(n_t, d)` array.
    seed: seed of the train/test split.

  Raises:
    ValueError: if a domain has fewer than 2 samples (nothing to hold out).
  """
  source_features = np.asarray(source_features, np.float64)
  target_features = np.asarray(target_features, np.float64)
  if len(source_features) < 2 or len(target_features) < 2:
    raise ValueError("proxy_a_distance needs at least 2 samples per domain, got "
                     f"{len(source_features)} and {len(target_features)}")
  features = np.concatenate([source_features, target_features]).reshape(
      len(source_features) + len(target_features), -1)
  domains = np.concatenate([np.zeros(len(source_features), np.int64),
                            np.ones(len(target_features), np.int64)])
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      features, domains, test_size=0.5, stratify=domains, random_state=seed)
  classifier = pipeline.make_pipeline(
      preprocessing.StandardScaler(), linear_model.LogisticRegression(max_iter=1000))
  classifier.fit(train_x, train_y)
  error = 1.0 - classifier.score(test_x, test_y)
  return float(2.0 * (1.0 - 2.0 * error))


def balance_factor(global_distance: float, class_distances: Sequence[float]) -> float:
  """BDA's balance factor `mu = 1 - d_global / (d_global + sum_c d_c)`.

  Wang et al., ICDM 2017, Eq. 6: the more the marginal distributions differ
  (large `d_global`), the more weight goes to the marginal term `(1 - mu)`.
  Negative A-distances (classifier worse than chance) count as 0; if every
  distance is 0 the two terms get equal weight (`mu = 0.5`). The result is in
  `[0, 1]`.

  Note: the paper sums the class distances, which is what this does; the
  authors' Python/Matlab code uses their mean instead (`mu = mean_c /
  (mean_c + d_global)`), which puts more weight on the marginal term when there
  are many classes.
  """
  global_distance = max(float(global_distance), 0.0)
  class_total = float(sum(max(float(d), 0.0) for d in class_distances))
  if global_distance + class_total <= 0.0:
    return 0.5
  return float(np.clip(1.0 - global_distance / (global_distance + class_total), 0.0, 1.0))


def estimate_balance_factor(source_features, source_labels, target_features,
                            target_labels, *, seed: int = 0) -> tuple[float, float, list[float]]:
  """`mu` from the global and per-class proxy A-distances of two labelled samples.

  Classes with fewer than 2 samples in either domain have no held-out estimate
  and are left out of the sum.

  Returns:
    `(mu, global_distance, class_distances)`.
  """
  source_features = np.asarray(source_features)
  target_features = np.asarray(target_features)
  source_labels = np.asarray(source_labels)
  target_labels = np.asarray(target_labels)
  global_distance = proxy_a_distance(source_features, target_features, seed=seed)
  class_distances = []
  for label in np.unique(source_labels):
    source_class = source_features[source_labels == label]
    target_class = target_features[target_labels == label]
    if len(source_class) >= 2 and len(target_class) >= 2:
      class_distances.append(proxy_a_distance(source_class, target_class, seed=seed))
  return balance_factor(global_distance, class_distances), global_distance, class_distances


@jax.jit
def _gaussian_mmd(source, target):
  pooled = jnp.concatenate([source, target], axis=0)
  squared = ops.pairwise_squared_distances(pooled, pooled)
  # Median heuristic over distinct pairs (the zeros on the diagonal would drag
  # the median down; the lower triangle repeats the upper).
  rows, cols = jnp.triu_indices(pooled.shape[0], k=1)
  median = jnp.median(jnp.sqrt(squared[rows, cols]))
  bandwidth_sq = jnp.maximum(median**2, ops.tiny(squared.dtype))
  kernel = jnp.exp(-squared / (2 * bandwidth_sq))
  num_source = source.shape[0]
  return (jnp.mean(kernel[:num_source, :num_source])
          + jnp.mean(kernel[num_source:, num_source:])
          - 2 * jnp.mean(kernel[:num_source, num_source:]))


def mmd_between(source, target, *, max_samples: int = 2000, seed: int = 0) -> float:
  """Squared MMD between two samples with one Gaussian kernel (median heuristic).

  `MMD^2 = mean k(s, s') + mean k(t, t') - 2 mean k(s, t)` (the biased
  V-statistic, >= 0), `k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`, `sigma` the
  median distance between distinct pooled samples (Gretton et al., JMLR 2012).
  Each domain is randomly subsampled to `max_samples` rows first, which bounds
  the `(n_s + n_t)^2` kernel matrix.
  """
  rng = np.random.default_rng(seed)
  source = ops.as_float_array(source)
  target = ops.as_float_array(target)
  if len(source) > max_samples:
    source = source[np.sort(rng.choice(len(source), max_samples, replace=False))]
  if len(target) > max_samples:
    target = target[np.sort(rng.choice(len(target), max_samples, replace=False))]
  return float(_gaussian_mmd(jnp.asarray(source), jnp.asarray(target)))


def _subsample_indices(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
  if count <= limit:
    return np.arange(count)
  return np.sort(rng.choice(count, limit, replace=False))


def tsne_plot(source_features, target_features, source_labels, target_labels,
              path: str | os.PathLike, *, max_points: int = 2000, seed: int = 0,
              title: str | None = None) -> str:
  """Writes a two-panel t-SNE PNG: points coloured by domain, then by class.

  Source and target are embedded together (sklearn `TSNE`, PCA init) so both
  panels share coordinates; at most `max_points` points are used, split
  evenly between the domains. Uses matplotlib's Agg canvas directly, so it
  never touches pyplot's global state or needs a display.

  Returns:
    `path` as a string.
  """
  # Plotting only: matplotlib's import takes a second that the shallow methods,
  # which draw nothing, would otherwise pay.
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  source_features = np.asarray(source_features, np.float64)
  target_features = np.asarray(target_features, np.float64)
  source_keep = _subsample_indices(len(source_features), max_points // 2, rng)
  target_keep = _subsample_indices(len(target_features), max_points - len(source_keep), rng)
  source_features = source_features[source_keep].reshape(len(source_keep), -1)
  target_features = target_features[target_keep].reshape(len(target_keep), -1)
  labels = np.concatenate([np.asarray(source_labels)[source_keep],
                           np.asarray(target_labels)[target_keep]])
  pooled = np.concatenate([source_features, target_features])
  # Perplexity must stay below the number of points; 30 is sklearn's default.
  perplexity = float(min(30.0, max(2.0, (len(pooled) - 1) / 3)))
  points = manifold.TSNE(n_components=2, init="pca", perplexity=perplexity,
                         random_state=seed).fit_transform(pooled)
  num_source = len(source_features)

  fig = figure.Figure(figsize=(12, 5.5))
  backend_agg.FigureCanvasAgg(fig)
  by_domain, by_class = fig.subplots(1, 2)
  by_domain.scatter(points[:num_source, 0], points[:num_source, 1], s=6,
                    c="tab:blue", label="source", alpha=0.7)
  by_domain.scatter(points[num_source:, 0], points[num_source:, 1], s=6,
                    c="tab:red", label="target", alpha=0.7)
  by_domain.legend(loc="best", markerscale=3)
  by_domain.set_title("by domain")
  _, label_codes = np.unique(labels, return_inverse=True)
  by_class.scatter(points[:num_source, 0], points[:num_source, 1], s=6, marker="o",
                   c=label_codes[:num_source], cmap="tab20", vmin=0,
                   vmax=max(label_codes.max(), 1), label="source")
  by_class.scatter(points[num_source:, 0], points[num_source:, 1], s=10, marker="x",
                   c=label_codes[num_source:], cmap="tab20", vmin=0,
                   vmax=max(label_codes.max(), 1), label="target")
  by_class.legend(loc="best", markerscale=2)
  by_class.set_title("by class (o source, x target)")
  for axis in (by_domain, by_class):
    axis.set_xticks([])
    axis.set_yticks([])
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100, format="png")
  return os.fspath(path)
