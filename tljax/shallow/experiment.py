"""Runs the shallow methods on one source/target feature file and reports.

This is the library behind `python -m tljax.shallow` (see `__main__.py`); tests
and notebooks call `run_experiment` directly. For each method it fits the
adaptation on the labelled source and unlabelled target features, scores the
target with 1-NN and with logistic regression on the embeddings, and records
wall time and two shift diagnostics of the embedded domains (proxy A-distance,
Gaussian MMD^2). Target labels are used for nothing but these scores.

A method runs once per seed when its result depends on the seed: every
method when the domains are subsampled (`max_per_domain`), otherwise only
`bda_auto` (its A-distances split the data at random). Deterministic methods
run once, and their std is 0.
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tljax.shallow import analysis
from tljax.shallow import estimators
from tljax.shallow import ops

# Method name -> (estimator class, fixed constructor arguments).
METHOD_SPECS = {
    "none": (estimators.NoAdaptation, {}),
    "tca": (estimators.TCA, {}),
    "jda": (estimators.JDA, {}),
    "bda": (estimators.BDA, {}),
    "bda_auto": (estimators.BDA, {"mu": "auto"}),
    "coral": (estimators.CORAL, {}),
    "sa": (estimators.SA, {}),
    "gfk": (estimators.GFK, {}),
}
DEFAULT_METHODS = ("tca", "jda", "bda", "bda_auto", "coral", "sa", "gfk")
# Input preprocessing applied to both domains before any method (and the
# no-adaptation baseline) sees them. 'l2': each sample scaled to unit norm, what
# the TCA/JDA/BDA reference code does inside (so those methods are unchanged by
# it) and what keeps CORAL's recoloured source from collapsing onto one hub
# sample on sparse post-ReLU features.
NORMALIZATIONS = ("none", "l2")
FEATURE_KEYS = ("source_features", "source_labels", "target_features", "target_labels")


def load_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads and checks the four arrays of a features `.npz`."""
  with np.load(path) as data:
    missing = [key for key in FEATURE_KEYS if key not in data]
    if missing:
      raise KeyError(f"{path} lacks {missing}; it has {sorted(data.keys())}")
    arrays = {key: np.asarray(data[key]) for key in FEATURE_KEYS}
  for domain in ("source", "target"):
    features, labels = arrays[f"{domain}_features"], arrays[f"{domain}_labels"]
    arrays[f"{domain}_features"] = features.reshape(len(features), -1)
    if len(features) != len(labels):
      raise ValueError(f"{domain}: {len(features)} features but {len(labels)} labels")
  return arrays


def normalize_features(data: dict[str, np.ndarray], normalize: str) -> dict[str, np.ndarray]:
  """Applies a `NORMALIZATIONS` preprocessing to both domains' features."""
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"unknown normalize={normalize!r}; choose one of {NORMALIZATIONS}")
  if normalize == "none":
    return data
  out = dict(data)
  for key in ("source_features", "target_features"):
    out[key] = np.asarray(ops.normalize_rows(jnp.asarray(data[key], jnp.float32)))
  return out


def _method_kwargs(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
  """Constructor arguments: the method's fixed ones plus the overrides it accepts."""
  cls, fixed = METHOD_SPECS[method]
  accepted = set(cls._param_names)  # pylint: disable=protected-access
  kwargs = {k: v for k, v in overrides.items() if k in accepted and v is not None}
  kwargs.update(fixed)
  return kwargs


def _summary(values: Sequence[float]) -> dict[str, Any]:
  values = [float(v) for v in values]
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def _subsample(features, labels, limit, rng):
  if not limit or len(features) <= limit:
    return features, labels
  keep = np.sort(rng.choice(len(features), limit, replace=False))
  return features[keep], labels[keep]


def run_method(method: str, data: dict[str, np.ndarray], *, seeds: Sequence[int],
               max_per_domain: int = 0, overrides: dict[str, Any] | None = None,
               diagnostics: bool = True, tsne_path: str | None = None) -> dict[str, Any]:
  """Fits and scores one method, over `seeds` if it is randomised."""
  kwargs = _method_kwargs(method, overrides or {})
  randomized = bool(max_per_domain) or kwargs.get("mu") == "auto"
  run_seeds = list(seeds) if randomized else list(seeds)[:1]
  accuracy_1nn, accuracy_logreg, wall_times = [], [], []
  result: dict[str, Any] = {}
  for run, seed in enumerate(run_seeds):
    rng = np.random.default_rng(seed)
    source, source_labels = _subsample(data["source_features"], data["source_labels"],
                                       max_per_domain, rng)
    target, target_labels = _subsample(data["target_features"], data["target_labels"],
                                       max_per_domain, rng)
    cls, _ = METHOD_SPECS[method]
    run_kwargs = dict(kwargs, seed=seed) if "seed" in cls._param_names else kwargs  # pylint: disable=protected-access
    model = cls(**run_kwargs, classifier="1nn")
    start = time.perf_counter()
    model.fit(source, source_labels, target)
    accuracy_1nn.append(model.score(target, target_labels))
    wall_times.append(time.perf_counter() - start)
    model.set_classifier("logreg")
    accuracy_logreg.append(model.score(target, target_labels))
    if run == 0:
      result["params"] = {k: v for k, v in model.get_params().items() if k != "classifier"}
      if diagnostics:
        result["proxy_a_distance"] = analysis.proxy_a_distance(
            model.source_embedding_, model.target_embedding_, seed=seed)
        result["mmd"] = analysis.mmd_between(
            model.source_embedding_, model.target_embedding_, seed=seed)
      if tsne_path:
        result["tsne"] = analysis.tsne_plot(
            model.source_embedding_, model.target_embedding_, source_labels,
            target_labels, tsne_path, seed=seed, title=method)
    if hasattr(model, "mu_"):
      result.setdefault("mu", []).append(model.mu_)
  result.update({
      "randomized": randomized,
      "runs": len(run_seeds),
      "seeds": run_seeds,
      "accuracy_1nn": _summary(accuracy_1nn),
      "accuracy_logreg": _summary(accuracy_logreg),
      # The first run includes jit compilation for these shapes.
      "wall_time_s": _summary(wall_times),
  })
  return result


def _percent(summary):
  return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}"


def write_reports(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
  """Writes `shallow_results.{json,md,csv}` under `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f"shallow_results.{ext}") for ext in ("json", "md", "csv")}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=2, default=str)

  data = report["data"]
  lines = [
      "# Shallow domain adaptation",
      "",
      f"Features: `{data['features']}` — {data['num_source']} source / "
      f"{data['num_target']} target samples, {data['num_features']} features, "
      f"{data['num_classes']} classes, normalisation `{report['config']['normalize']}`. "
      f"Backend: {report['environment']['backend']}.",
      "",
      "Target accuracy (%) as mean ± std over runs; deterministic methods run once. "
      "Wall time is fit + 1-NN scoring per run, averaged; it includes jit compilation "
      "the first time a method meets these shapes.",
      "",
      "| method | 1-NN acc | logreg acc | proxy A-dist | MMD² | runs | wall time (s) |",
      "|---|---|---|---|---|---|---|",
  ]
  rows = []
  for method, result in report["results"].items():
    a_distance = result.get("proxy_a_distance")
    mmd = result.get("mmd")
    lines.append(
        f"| {method} | {_percent(result['accuracy_1nn'])} | "
        f"{_percent(result['accuracy_logreg'])} | "
        f"{'' if a_distance is None else f'{a_distance:.3f}'} | "
        f"{'' if mmd is None else f'{mmd:.4f}'} | {result['runs']} | "
        f"{result['wall_time_s']['mean']:.2f} |")
    rows.append({
        "method": method,
        "accuracy_1nn_mean": result["accuracy_1nn"]["mean"],
        "accuracy_1nn_std": result["accuracy_1nn"]["std"],
        "accuracy_logreg_mean": result["accuracy_logreg"]["mean"],
        "accuracy_logreg_std": result["accuracy_logreg"]["std"],
        "proxy_a_distance": a_distance,
        "mmd": mmd,
        "runs": result["runs"],
        "wall_time_s_mean": result["wall_time_s"]["mean"],
    })
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return paths


def run_experiment(features: str | os.PathLike, out_dir: str | os.PathLike, *,
                   methods: Sequence[str] = DEFAULT_METHODS, seeds: int = 3,
                   max_per_domain: int = 0, overrides: dict[str, Any] | None = None,
                   diagnostics: bool = True, tsne: bool = False,
                   normalize: str = "none") -> dict[str, Any]:
  """No-adaptation baseline plus each method on one features file.

  Args:
    features: `.npz` with `source_features, source_labels, target_features,
      target_labels`.
    out_dir: where the reports (and t-SNE PNGs) go.
    methods: names from `METHOD_SPECS`; 'none' is always run first.
    seeds: number of seeds (0..seeds-1) for randomised methods.
    max_per_domain: if > 0, each run subsamples each domain to this many
      samples (bounds the `(n_s + n_t)^2` kernel problems).
    overrides: hyperparameters passed to every method that accepts them
      (e.g. `{'dim': 20, 'kernel': 'rbf'}`); `None` values are ignored.
    diagnostics: also report proxy A-distance and MMD of the embeddings.
    tsne: also write `tsne_<method>.png` for the first run of each method.
    normalize: input preprocessing of both domains, one of `NORMALIZATIONS`.

  Returns:
    The report that was written to `shallow_results.json`.
  """
  unknown = [m for m in methods if m not in METHOD_SPECS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHOD_SPECS)}")
  data = normalize_features(load_features(features), normalize)
  os.makedirs(out_dir, exist_ok=True)
  ordered = ["none"] + [m for m in methods if m != "none"]
  results = {}
  for method in ordered:
    tsne_path = os.path.join(out_dir, f"tsne_{method}.png") if tsne else None
    results[method] = run_method(
        method, data, seeds=range(max(seeds, 1)), max_per_domain=max_per_domain,
        overrides=overrides, diagnostics=diagnostics, tsne_path=tsne_path)
  report = {
      "config": {
          "methods": ordered, "seeds": seeds, "max_per_domain": max_per_domain,
          "overrides": {k: v for k, v in (overrides or {}).items() if v is not None},
          "diagnostics": diagnostics, "tsne": tsne, "normalize": normalize,
      },
      "data": {
          "features": os.fspath(features),
          "num_source": int(len(data["source_features"])),
          "num_target": int(len(data["target_features"])),
          "num_features": int(data["source_features"].shape[1]),
          "num_classes": int(len(np.unique(data["source_labels"]))),
      },
      "environment": {
          "jax": jax.__version__,
          "backend": jax.default_backend(),
          "x64": bool(jax.config.jax_enable_x64),
      },
      "results": results,
  }
  write_reports(report, out_dir)
  return report
