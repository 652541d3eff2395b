"""`tljax.analyze`: diagnostics of a trained run and of raw pixels."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config
from tljax import analyze, shallow, train


def test_analyze_a_workdir(digits_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(digits_data_dir, total_steps=4, eval_every=4,
                                       checkpoint_every=4, log_every=2),
                           workdir, devices=jax.devices()[:1])
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  subprocess.run([sys.executable, "-m", "tljax.analyze", f"--workdir={workdir}", "--seeds=1",
                  "--max_points=200", "--shallow"], cwd=REPO, env=env, check=True,
                 capture_output=True)
  out = os.path.join(workdir, "analysis")
  report = json.load(open(os.path.join(out, "analysis.json")))
  assert report["num_source"] == 300 and report["num_target"] == 298 and report["dim"] == 32
  with Image.open(os.path.join(out, "tsne.png")) as image:
    image.verify()
  data = np.load(os.path.join(out, "features.npz"))
  source, target = (np.asarray(data[f"{d}_features"], np.float64) for d in ("source", "target"))
  # MMD^2 of the saved features in numpy: the biased statistic with a Gaussian
  # kernel whose width is the median distance between distinct pooled samples.
  pooled = np.concatenate([source, target])
  squared = np.maximum(((pooled[:, None] - pooled[None]) ** 2).sum(-1), 0)
  sigma = np.median(np.sqrt(squared[~np.eye(len(pooled), dtype=bool)]))
  kernel = np.exp(-squared / (2 * sigma**2))
  n = len(source)
  mmd2 = kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
  assert report["mmd2"] == pytest.approx(mmd2, rel=1e-3, abs=1e-6)
  # The proxy A-distance (its formula: tests/test_shallow.py) of those features, seed 0.
  assert report["proxy_a_distance"] == pytest.approx(
      shallow.proxy_a_distance(source, target, seed=0), abs=1e-9)
  assert data["source_features"].shape == (300, 32) and data["target_labels"].shape == (298,)
  results = json.load(open(os.path.join(out, "shallow_results.json")))["results"]
  assert {"none", "tca", "jda", "bda", "coral", "sa", "gfk"} <= set(results)


def test_pixels_of_the_two_domains_are_far_apart(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir)
  report = analyze.analyze(config, str(tmp_path), extractor=None, seeds=1, max_points=100)
  # Grey digits and photo-blended digits: a linear classifier tells them apart.
  assert report["proxy_a_distance"] > 1.5 and report["dim"] == 28 * 28 * 3
  assert report["target_1nn_accuracy"] < 0.5
