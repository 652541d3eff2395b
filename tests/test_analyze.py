"""`tljax.analyze`: diagnostics of a trained run and of raw pixels."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from conftest import REPO, tiny_config
from tljax import analyze, train


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
  assert -0.5 <= report["proxy_a_distance"] <= 2.0 and report["mmd2"] > 0
  with Image.open(os.path.join(out, "tsne.png")) as image:
    image.verify()
  data = np.load(os.path.join(out, "features.npz"))
  assert data["source_features"].shape == (300, 32) and data["target_labels"].shape == (298,)
  results = json.load(open(os.path.join(out, "shallow_results.json")))["results"]
  assert {"none", "tca", "jda", "bda", "coral", "sa", "gfk"} <= set(results)


def test_pixels_of_the_two_domains_are_far_apart(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir)
  report = analyze.analyze(config, str(tmp_path), extractor=None, seeds=1, max_points=100)
  # Grey digits and photo-blended digits: a linear classifier tells them apart.
  assert report["proxy_a_distance"] > 1.5 and report["dim"] == 28 * 28 * 3
  assert report["target_1nn_accuracy"] < 0.5
