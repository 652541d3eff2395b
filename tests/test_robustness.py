"""Runs that cannot be mixed up: bad input refused in one line with the workdir
untouched, the workdir lock, the run identity on resume, checkpoint fallback,
and the README's own-domain example."""

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from tljax import train
from tljax import workdir as workdir_lib

_TINY = ["--config.model.backbone_kwargs.widths=(8,8,16)", "--config.model.bottleneck_dim=32",
         "--config.batch_size=16", "--config.eval_batch_size=128", "--config.log_every=2",
         "--config.data.num_threads=0", "--config.total_steps=4", "--config.eval_every=2",
         "--config.checkpoint_every=2"]


def _env():
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _cli(data_dir, workdir, *extra, config="configs/source_only.py:digits"):
  command = [sys.executable, "-m", "tljax.main", f"--config={config}", f"--workdir={workdir}",
             f"--config.data_dir={data_dir}", *_TINY, *extra]
  return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=600)


def _snapshot(path):
  """Every file under `path` with a hash of its bytes (None: no such directory)."""
  if not os.path.exists(path):
    return None
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def finished(digits_data_dir, tmp_path_factory):
  """A finished tiny source_only run (4 steps, checkpoints 2 and 4)."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  result = _cli(digits_data_dir, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _corrupt_safetensors(path):
  import safetensors.numpy
  safetensors.numpy.save_file({"conv1.weight": np.ones((4, 3, 3, 3), np.float32)}, path)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncated_pth(path):
  import torch
  torch.save({"conv1.weight": torch.ones(64, 3, 7, 7)}, path)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 200)


# (name, flags, on the finished workdir?, regex of the one-line error)
BAD_INPUTS = [
    ("batch_size_zero", ["--config.batch_size=0"], False, r"config\.batch_size=0 is invalid"),
    ("eval_every_zero", ["--config.eval_every=0"], False, r"config\.eval_every=0 is invalid"),
    ("negative_learning_rate", ["--config.optimizer.learning_rate=-0.1"], False,
     r"config\.optimizer\.learning_rate=-0\.1 is invalid: it must be a finite number > 0"),
    ("negative_total_steps", ["--config.total_steps=-5"], False,
     r"config\.total_steps=-5 is invalid"),
    ("data_dir_is_a_file", ["--config.data_dir={file}"], False, r"is a file"),
    ("corrupt_safetensors", ["--config.model.init={safetensors}"], False,
     r"not a valid safetensors file"),
    ("truncated_pth", ["--config.model.init={pth}"], False, r"truncated or corrupt torch file"),
    ("unknown_backbone_keyword", ["--config.model.backbone_kwargs.bogus=1"], False,
     r"backbone .small_cnn. does not take bogus; .*may set .*widths"),
    ("unknown_backbone_on_finished_run", ["--config.model.name=resnet9"], True,
     r"unknown backbone 'resnet9'"),
    ("changed_seed_on_finished_run", ["--config.seed=7"], True,
     r"holds a run with another config: seed: 0 -> 7.*--allow_changes=seed"),
    ("changed_learning_rate_on_finished_run", ["--config.optimizer.learning_rate=0.02"], True,
     r"optimizer\.learning_rate: 0\.01 -> 0\.02"),
    ("other_method_on_finished_run", ["--config=configs/mcc.py:digits"], True,
     r"another config: .*method\.name: 'source_only' -> 'mcc'"),
]


@pytest.mark.parametrize("name, flags, on_finished, message", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_leaves_the_workdir_untouched(
    name, flags, on_finished, message, digits_data_dir, finished, tmp_path):
  files = {"file": str(tmp_path / "a_file"), "safetensors": str(tmp_path / "w.safetensors"),
           "pth": str(tmp_path / "w.pth")}
  with open(files["file"], "w") as f:
    f.write("not a directory")
  _corrupt_safetensors(files["safetensors"])
  _truncated_pth(files["pth"])
  flags = [f.format(**files) for f in flags]
  if on_finished:
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished, workdir)
  else:
    workdir = str(tmp_path / "fresh")
  before = _snapshot(workdir)
  config = [f for f in flags if f.startswith("--config=")]
  extra = [f for f in flags if not f.startswith("--config=")]
  kwargs = {"config": config[0][len("--config="):]} if config else {}
  result = _cli(digits_data_dir, workdir, *extra, **kwargs)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert re.search(message, lines[0]), lines[0]
  assert _snapshot(workdir) == before  # nothing written: not config.json, not a lock


# ----------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.LOCK_NAME), "w") as f:
    json.dump(holder, f)


def test_live_lock_refuses_a_second_run(make_config, tmp_path):
  import socket
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    workdir = str(tmp_path / "busy")
    _write_lock(workdir, run="other", host=socket.gethostname(), pid=sleeper.pid, since="now")
    with pytest.raises(workdir_lib.WorkdirInUseError, match=rf"in use by another run \(pid {sleeper.pid}"):
      train.train_and_evaluate(make_config(), workdir, devices=jax.devices()[:1])
    assert os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))  # theirs, kept
    assert not os.path.exists(os.path.join(workdir, "config.json"))
    # A lock from another host cannot be checked: refused too.
    _write_lock(str(tmp_path / "remote"), run="other", host="elsewhere", pid=1, since="now")
    with pytest.raises(workdir_lib.WorkdirInUseError, match="on elsewhere"):
      train.train_and_evaluate(make_config(), str(tmp_path / "remote"),
                               devices=jax.devices()[:1])
  finally:
    sleeper.kill()
    sleeper.wait()


def test_stale_lock_is_taken_over_and_released(make_config, tmp_path, caplog):
  import socket
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  workdir = str(tmp_path / "stale")
  _write_lock(workdir, run="killed", host=socket.gethostname(), pid=dead.pid, since="then")
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(make_config(total_steps=2, eval_every=2, checkpoint_every=2),
                           workdir, devices=jax.devices()[:1])
  assert any("Taking over the lock" in r.getMessage() for r in caplog.records)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


def test_two_processes_on_one_workdir(digits_data_dir, tmp_path):
  """Started together on one workdir, one run trains; the other is refused in one
  line (it finds the lock), and the workdir holds one run."""
  workdir = str(tmp_path / "shared")
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(
        lambda seed: _cli(digits_data_dir, workdir, f"--config.seed={seed}",
                          "--config.total_steps=40", "--config.eval_every=40",
                          "--config.checkpoint_every=20"), (0, 1)))
  codes = sorted(r.returncode for r in results)
  assert codes[0] == 0 and codes[1] != 0, [r.stderr[-1500:] for r in results]
  refused = next(r for r in results if r.returncode != 0)
  assert re.search(r"error: .*(in use by another run|holds a run with another config)",
                   refused.stderr), refused.stderr[-2000:]
  with open(os.path.join(workdir, "results.json")) as f:
    finished_seed = json.load(f)["config"]["seed"]
  winner = next(r for r in results if r.returncode == 0)
  assert f"--config.seed={finished_seed}" in " ".join(winner.args)


# ----------------------------------------------------------------------------
# Run identity.
# ----------------------------------------------------------------------------


def test_resume_with_a_changed_config_needs_an_explicit_override(make_config, tmp_path):
  workdir = str(tmp_path / "run")
  small = dict(total_steps=2, eval_every=2, checkpoint_every=2)
  first = train.train_and_evaluate(make_config(**small), workdir, devices=jax.devices()[:1])
  with pytest.raises(workdir_lib.RunMismatchError, match=r"seed: 0 -> 7"):
    train.train_and_evaluate(make_config(seed=7, **small), workdir, devices=jax.devices()[:1])
  # Fields that may change on a resume: a longer run continues, and so does one
  # whose convolutions are computed another way.
  longer = train.train_and_evaluate(
      make_config(total_steps=4, eval_every=2, checkpoint_every=2,
                  **{"model.backbone_kwargs.conv_impl": "im2col"}),
      workdir, devices=jax.devices()[:1])
  assert longer["step"] == 4 and longer["config_changes_allowed_on_resume"] == []
  # An explicit override is recorded.
  allowed = train.train_and_evaluate(
      make_config(**{"optimizer.learning_rate": 0.02, "total_steps": 6, "eval_every": 2,
                     "checkpoint_every": 2}),
      workdir, devices=jax.devices()[:1], allow_changes=("optimizer.learning_rate",))
  assert allowed["config_changes_allowed_on_resume"] == ["optimizer.learning_rate"]
  assert first["step"] == 2 and allowed["step"] == 6


# ----------------------------------------------------------------------------
# Checkpoint fallback.
# ----------------------------------------------------------------------------


def _largest_file(path):
  files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
  return max(files, key=os.path.getsize)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(make_config, tmp_path, caplog):
  config = make_config(total_steps=4, eval_every=2, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  reference, _ = workdir_lib.latest_state(workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    reference_results = json.load(f)
  os.remove(os.path.join(workdir, "results.json"))
  victim = _largest_file(os.path.join(workdir, "checkpoints", "4"))
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 3)
  caplog.set_level(logging.WARNING)
  results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert any("does not restore" in r.getMessage() for r in caplog.records)
  assert os.listdir(os.path.join(workdir, "unreadable_checkpoints"))  # moved aside, not deleted
  state, step = workdir_lib.latest_state(workdir)
  assert step == 4
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(reference["params"])):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  assert results["target_accuracy"] == reference_results["target_accuracy"]
  assert results["selected"] == reference_results["selected"]


def test_no_readable_checkpoint_is_one_error(make_config, tmp_path):
  config = make_config(total_steps=2, eval_every=2, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  victim = _largest_file(os.path.join(workdir, "checkpoints", "2"))
  with open(victim, "wb") as f:
    f.write(b"garbage")
  with pytest.raises(ValueError, match=r"no checkpoint in .* restores: step 2 .*Move the "
                                       r"checkpoints/ folder away"):
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])


# ----------------------------------------------------------------------------
# Your own domains, as the README shows them.
# ----------------------------------------------------------------------------


def _image_folder(root, seed):
  """Three classes of 32x32 PNGs, each class a different stripe pattern."""
  import PIL.Image
  rng = np.random.default_rng(seed)
  for label, name in enumerate(("cat", "dog", "fox")):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(12):
      image = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
      image[:, label * 10:label * 10 + 8] += 150
      PIL.Image.fromarray(image).save(os.path.join(root, name, f"{i}.png"))


def test_readme_own_domain_example_runs_verbatim(digits_data_dir, tmp_path):
  with open(REPO / "README.md") as f:
    readme = f.read()
  block = re.search(r"```bash\n(python -m tljax\.main [^`]*image_folder:/data/shop/catalogue[^`]*)```",
                    readme)
  assert block, "README has no own-domain example command"
  command = block.group(1).replace("\\\n", " ").split()
  source, target = str(tmp_path / "catalogue"), str(tmp_path / "phone_photos")
  _image_folder(source, 0)
  _image_folder(target, 1)
  command = [a.replace("/data/shop/catalogue", source).replace("/data/shop/phone_photos", target)
             for a in command]
  command = [sys.executable if a == "python" else a for a in command]
  command = [a if not a.startswith("--workdir=") else f"--workdir={tmp_path / 'own'}"
             for a in command]
  # Only the length of the run and where datasets are built differ from the README.
  command += [f"--config.data_dir={tmp_path / 'tfds'}", "--config.total_steps=2",
              "--config.eval_every=2", "--config.checkpoint_every=2", "--config.batch_size=8",
              "--config.data.num_threads=0"]
  result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "evaluating on 'train' (transductive)" in result.stderr
  with open(tmp_path / "own" / "results.json") as f:
    results = json.load(f)
  assert results["target_eval"].endswith(":train")  # the one split an image folder has
  assert len(results["target_per_class_accuracy"]) == 3
