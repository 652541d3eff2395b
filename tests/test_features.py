"""Feature extraction and heads trained on cached features (linear probes)."""

import importlib
import json
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO, tiny_config
from tljax import features, train
from tljax import workdir as workdir_lib
from tljax.data import open_domain

sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def trained_workdir(digits_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("source_only"))
  train.train_and_evaluate(tiny_config(digits_data_dir, total_steps=60, eval_every=60,
                                       checkpoint_every=60, log_every=20),
                           workdir, devices=jax.devices()[:1])
  return workdir


def test_extraction_matches_the_networks_backbone(trained_workdir, digits_data_dir):
  extractor = features.from_workdir(trained_workdir, layer="backbone")
  domain = open_domain("digits_m", "test", data_dir=digits_data_dir)
  feats, labels = features.extract(extractor, domain, batch_size=64)
  assert feats.shape == (len(domain), 16 * 4 * 4) and labels.shape == (len(domain),)
  np.testing.assert_array_equal(labels, [domain.source[i]["label"] for i in range(len(domain))])
  # Recompute a few examples directly through the classifier's backbone.
  from tljax.data.preprocess import get_preprocess
  pp = get_preprocess("digits")
  images = np.stack([pp(domain.source[i], None)["image"] for i in (0, 5, len(domain) - 1)])
  direct = extractor.classifier.apply(extractor.variables, images,
                                      method=lambda m, x: m.backbone(x, train=False))
  np.testing.assert_allclose(feats[[0, 5, len(domain) - 1]], direct, rtol=1e-5, atol=1e-5)
  logits = features.extract(features.from_workdir(trained_workdir, layer="logits"), domain)[0]
  assert logits.shape == (len(domain), 10)


def test_linear_probe_trains_on_the_cache(trained_workdir, digits_data_dir, tmp_path):
  config = importlib.import_module("configs.linear_probe").get_config("digits")
  config.data_dir = digits_data_dir
  config.features.workdir = trained_workdir
  config.total_steps, config.eval_every, config.checkpoint_every = 60, 60, 60
  config.batch_size, config.data.num_threads = 16, 0
  workdir = str(tmp_path / "probe")
  results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  cache = os.path.join(workdir, "feature_cache")
  files = sorted(os.listdir(cache))
  assert len(files) == 4 and all(f.endswith(".npz") for f in files)  # 2 domains x 2 splits
  assert results["source_accuracy"] > 0.5  # the source-trained backbone separates source classes
  # A second run with the same extractor reads the cache instead of extracting again.
  mtimes = {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in files}
  config.features.cache_dir = cache
  train.train_and_evaluate(config, str(tmp_path / "probe2"), devices=jax.devices()[:1])
  assert {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in files} == mtimes


def test_a_run_refused_by_a_live_lock_writes_no_feature_cache(trained_workdir, digits_data_dir,
                                                              tmp_path):
  """The features are extracted before the workdir is claimed (the model's
  input width comes from them), but written into `feature_cache/` only once
  the run holds the lock: a refused run leaves the workdir as it was."""
  config = importlib.import_module("configs.linear_probe").get_config("digits")
  config.data_dir = digits_data_dir
  config.features.workdir = trained_workdir
  config.batch_size, config.data.num_threads = 16, 0
  workdir = tmp_path / "busy"
  workdir.mkdir()
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(
        {"run": "other", "host": socket.gethostname(), "pid": sleeper.pid, "since": "now"}))
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    with pytest.raises(workdir_lib.WorkdirInUseError, match="in use by another run"):
      train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before
  finally:
    sleeper.kill()
    sleeper.wait()


def test_probe_without_an_extractor_is_a_clear_error(digits_data_dir, tmp_path):
  config = importlib.import_module("configs.linear_probe").get_config("digits")
  config.data_dir = digits_data_dir
  with pytest.raises(ValueError, match="config.features needs either `workdir`"):
    train.train_and_evaluate(config, str(tmp_path / "x"), devices=jax.devices()[:1])


def test_workdir_without_checkpoints_is_a_clear_error(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="no checkpoints/ directory"):
    features.from_workdir(str(tmp_path))


def test_pretrained_extractor_reads_a_torchvision_checkpoint(digits_data_dir, tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  net = torchvision.models.resnet18(num_classes=1000).eval()
  path = str(tmp_path / "resnet18.safetensors")
  safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
  extractor = features.from_pretrained(ml_collections.ConfigDict(
      {"model": "resnet18", "init": path, "image_size": 32, "backbone_kwargs": {},
       "eval_preprocess": {"name": "digits"}}))
  domain = open_domain("digits", "test", data_dir=digits_data_dir)
  feats, _ = features.extract(extractor, domain, batch_size=128)
  assert feats.shape == (len(domain), 512)
  from tljax.data.preprocess import get_preprocess
  image = get_preprocess("digits")(domain.source[3], None)["image"]
  with torch.no_grad():
    net.fc = torch.nn.Identity()
    expected = net(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())).numpy()[0]
  np.testing.assert_allclose(feats[3], expected, rtol=1e-4, atol=1e-4)
