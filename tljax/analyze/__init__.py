"""Did adaptation align the domains? Diagnostics of a trained run, from its workdir.

    python -m tljax.analyze --workdir=DIR [--layer=features] [--shallow]
    python -m tljax.analyze --config=configs/source_only.py:digits --pixels --out=DIR --shallow

For a tljax run it extracts the chosen layer's features of the source and
target evaluation splits with the run's latest checkpoint, and writes to
`DIR/analysis/` (or `--out`):

- `analysis.json`: proxy A-distance (`2 (1 - 2 err)` of a linear domain
  classifier on held-out features), Gaussian MMD^2 between the domains, and the
  target accuracy of a 1-NN classifier fitted on source features;
- `tsne.png`: a t-SNE of source and target features, coloured by domain and by
  class;
- `features.npz`: the features in the layout `python -m tljax.shallow` reads;
- with `--shallow`, the shallow methods (TCA, JDA, BDA, CORAL, SA, GFK) on those
  features: `shallow_results.{json,md,csv}`.

`--pixels` uses the raw (preprocessed, flattened) images of a config's task
instead of a network's features, the usual "no deep features" baseline. The
command line is `tljax/analyze/__main__.py`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from tljax import features as features_lib
from tljax.data import open_domain, pipeline, preprocess
from tljax.shallow import analysis, estimators, experiment


def domain_features(config, extractor=None, *, cache_dir: str) -> dict[str, np.ndarray]:
  """Source/target evaluation-split features (or pixels, without an extractor)."""
  out = {}
  for prefix, name, split in (("source", config.source, config.eval_source_split),
                              ("target", config.target, config.eval_target_split)):
    domain = open_domain(name, split, data_dir=config.data_dir, manual_dir=config.manual_dir)
    if extractor is not None:
      values, labels = features_lib.cached(extractor, domain, cache_dir)
    else:
      fn = preprocess.get_preprocess(**config.data.eval_preprocess)
      batches = list(pipeline.eval_batches(domain, global_batch_size=256, preprocess=fn))
      keep = np.concatenate([b["mask"] for b in batches]) > 0
      values = np.concatenate([b["image"].reshape(len(b["image"]), -1) for b in batches])[keep]
      labels = np.concatenate([b["label"] for b in batches])[keep]
    out[f"{prefix}_features"], out[f"{prefix}_labels"] = values.astype(np.float32), labels
  return out


def diagnostics(data: dict[str, np.ndarray], *, seeds: int = 3) -> dict[str, Any]:
  """Proxy A-distance (mean over seeds), MMD^2 and source-fitted 1-NN target accuracy."""
  source, target = data["source_features"], data["target_features"]
  distances = [analysis.proxy_a_distance(source, target, seed=s) for s in range(max(seeds, 1))]
  nearest = estimators.NoAdaptation(classifier="1nn").fit(source, data["source_labels"], target)
  return {
      "proxy_a_distance": float(np.mean(distances)),
      "proxy_a_distance_std": float(np.std(distances)),
      "mmd2": float(analysis.mmd_between(source, target)),
      "target_1nn_accuracy": float(nearest.score(target, data["target_labels"])),
      "num_source": int(len(source)),
      "num_target": int(len(target)),
      "dim": int(source.shape[1]),
  }


def analyze(config, out_dir: str, *, extractor=None, title: str = "", seeds: int = 3,
            shallow: bool = False, max_points: int = 2000,
            normalize: str = "none") -> dict[str, Any]:
  """Writes features.npz, analysis.json, tsne.png (and shallow results) to `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  data = domain_features(config, extractor, cache_dir=os.path.join(out_dir, "feature_cache"))
  features_path = os.path.join(out_dir, "features.npz")
  np.savez(features_path, **data)
  report = {"title": title, "source": f"{config.source}:{config.eval_source_split}",
            "target": f"{config.target}:{config.eval_target_split}",
            **diagnostics(data, seeds=seeds)}
  analysis.tsne_plot(data["source_features"], data["target_features"], data["source_labels"],
                     data["target_labels"], os.path.join(out_dir, "tsne.png"),
                     max_points=max_points, title=title)
  with open(os.path.join(out_dir, "analysis.json"), "w") as f:
    json.dump(report, f, indent=2)
  if shallow:
    experiment.run_experiment(features_path, out_dir, seeds=seeds, normalize=normalize)
  return report
