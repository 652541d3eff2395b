"""End to end: one command, its files, resumption, devices, and bad input."""

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from tljax import features, train
from tljax.data import open_domain
from tljax.workdir import latest_state


def _final_params(workdir):
  state, step = latest_state(workdir)
  flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  return step, {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in flat}


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _label_counts(data_dir, name, split, num_classes):
  """Examples per class of a split, read from the dataset itself."""
  domain = open_domain(name, split, data_dir=data_dir)
  return np.bincount([int(domain.source[i]["label"]) for i in range(len(domain))],
                     minlength=num_classes)


def test_end_to_end_run_writes_its_files(make_config, tmp_path, caplog, digits_data_dir):
  caplog.set_level(logging.INFO)
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(make_config(), workdir, devices=jax.devices()[:1])
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  for key in ("target_accuracy", "source_accuracy", "step", "config", "versions",
              "target_per_class_accuracy", "oracle_best", "selected"):
    assert key in on_disk
  # Three ways: final (step 6), oracle-best (the eval with the best target
  # accuracy) and each validator's pick, with that step's target accuracy.
  evals = {l["step"]: l for l in _jsonl(workdir) if l["kind"] == "validators"}
  assert sorted(evals) == [3, 6]
  best = max(evals, key=lambda k: (evals[k]["oracle"], -k))
  assert on_disk["oracle_best"]["step"] == best
  assert on_disk["oracle_best"]["target_accuracy"] == evals[best]["target_accuracy"]
  assert set(on_disk["selected"]) == {"source_accuracy", "target_entropy", "snd", "bnm", "dev",
                                      "iwcv"}
  for name, pick in on_disk["selected"].items():
    assert pick["target_accuracy"] == evals[pick["step"]]["target_accuracy"], name
  assert on_disk["step"] == 6 and on_disk["target_accuracy"] == results["target_accuracy"]
  # Every example of the evaluated split counted once: each class's accuracy
  # times its size in the dataset is a whole number of hits, and the hits over
  # the split's size are the accuracy.
  counts = _label_counts(digits_data_dir, "digits_m", "test", 10)
  hits = np.asarray(on_disk["target_per_class_accuracy"], np.float64) * counts
  np.testing.assert_allclose(hits, np.round(hits), atol=1e-6)
  assert on_disk["target_report"]["num_examples"] == counts.sum()
  assert on_disk["target_accuracy"] == pytest.approx(hits.sum() / counts.sum(), abs=1e-9)
  assert on_disk["config"]["source"] == "digits" and on_disk["versions"]["jax"] == jax.__version__
  lines = _jsonl(workdir)
  assert [l["step"] for l in lines if l["kind"] == "train"] == [2, 4, 6]
  assert [l["step"] for l in lines if l["kind"] == "eval"] == [3, 6]
  assert all(np.isfinite(l["loss"]) for l in lines if l["kind"] == "train")
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  progress = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
  assert progress and "ETA" in progress[-1] and "(6/6)" in progress[-1]  # clu's report
  assert any(r.getMessage().startswith("step 6/6 | loss ") for r in caplog.records)
  assert [l["step"] for l in lines if l["kind"] == "progress" and "steps_per_sec" in l] == [
      2, 4, 6]
  # Re-running a finished run restores it and reports the same numbers.
  again = train.train_and_evaluate(make_config(), workdir, devices=jax.devices()[:1])
  assert again["target_accuracy"] == results["target_accuracy"] and again["step"] == 6


def test_one_device_and_eight_devices_agree(make_config, tmp_path):
  runs = {}
  for n in (1, 8):
    workdir = str(tmp_path / f"devices{n}")
    train.train_and_evaluate(make_config(), workdir, devices=jax.devices()[:n])
    runs[n] = (_final_params(workdir)[1], _jsonl(workdir))
  (params_1, log_1), (params_8, log_8) = runs[1], runs[8]
  assert params_1.keys() == params_8.keys()
  for k in params_1:
    np.testing.assert_allclose(params_8[k], params_1[k], rtol=1e-5, atol=1e-5, err_msg=k)
  for a, b in zip(log_1, log_8):
    if a["kind"] == "train":
      np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)


def test_initialisers_compiled_for_one_call_give_the_default_compilers_bits(
    make_config, monkeypatch):
  """`train.run_once` compiles the initialisers with other options (faster to
  compile); the initial state must be the same bits as the default compiler's."""
  config = make_config()
  config.method = importlib.import_module("configs.dann").get_config().method  # a discriminator too
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  assert train.ONCE_COMPILER_OPTIONS.get("cpu"), "nothing to compare"
  fast = train.build(config, 10, mesh, (32, 32, 3)).state
  monkeypatch.setattr(train, "ONCE_COMPILER_OPTIONS", {})
  default = train.build(config, 10, mesh, (32, 32, 3)).state
  leaves = jax.tree_util.tree_flatten_with_path((fast.params, fast.model_state))[0]
  others = jax.tree.leaves((default.params, default.model_state))
  assert len(leaves) == len(others) > 10
  for (path, a), b in zip(leaves, others):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_non_finite_loss_stops_with_a_clear_message(make_config, tmp_path):
  config = make_config(**{"optimizer.learning_rate": 1e30})
  with pytest.raises(train.NonFiniteError, match=r"step \d: .*loss=nan.*not finite.*learning_rate"):
    train.train_and_evaluate(config, str(tmp_path / "nan"), devices=jax.devices()[:1])


def test_unwritable_workdir(make_config, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match="cannot write to --workdir"):
    train.train_and_evaluate(make_config(), str(blocker / "run"), devices=jax.devices()[:1])


def test_unknown_dataset(make_config, tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'office_99'"):
    train.train_and_evaluate(make_config(target="office_99"), str(tmp_path / "x"),
                             devices=jax.devices()[:1])


def test_uncovered_param_groups_in_a_run(make_config, tmp_path):
  with pytest.raises(ValueError, match="covers no group for"):
    train.train_and_evaluate(make_config(param_groups=(("classifier/head/.*", 1.0),)),
                             str(tmp_path / "x"),
                             devices=jax.devices()[:1])


# ----------------------------------------------------------------------------
# The command line, in subprocesses (one simulated device each).
# ----------------------------------------------------------------------------

_TINY = ["--config.model.backbone_kwargs.widths=(8,8,16)", "--config.model.bottleneck_dim=32",
         "--config.batch_size=16", "--config.eval_batch_size=128", "--config.log_every=5",
         "--config.data.num_threads=0"]


def _command(data_dir, workdir, *extra):
  return [sys.executable, "-m", "tljax.main", "--config=configs/source_only.py:digits",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", *_TINY, *extra]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _wait_for(path, process, timeout=300):
  start = time.time()
  while not os.path.exists(path):
    assert process.poll() is None, "the run ended before it could be interrupted"
    assert time.time() - start < timeout
    time.sleep(0.02)


_RESUME_ARGS = ("--config.total_steps=200", "--config.checkpoint_every=20",
                "--config.eval_every=50")


@pytest.fixture(scope="module")
def uninterrupted(digits_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  subprocess.run(_command(digits_data_dir, workdir, *_RESUME_ARGS), cwd=REPO, env=_env(),
                 check=True, capture_output=True)
  return workdir


def _assert_same_run(workdir, reference):
  step, params = _final_params(workdir)
  ref_step, ref_params = _final_params(reference)
  assert step == ref_step == 200
  for k in ref_params:
    assert params[k].tobytes() == ref_params[k].tobytes(), k
  with open(os.path.join(workdir, "results.json")) as f, open(os.path.join(reference, "results.json")) as g:
    a, b = json.load(f), json.load(g)
  # Final, oracle-best and every validator's selection: as uninterrupted.
  for key in ("target_accuracy", "source_accuracy", "target_per_class_accuracy", "oracle_best",
              "selected", "selected_checkpoints", "validator_rank_correlation"):
    assert a[key] == b[key], key
  evals = lambda d: [l for l in _jsonl(d) if l["kind"] == "eval"]
  assert evals(workdir) == evals(reference)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_resumes_bit_identically(digits_data_dir, tmp_path, uninterrupted, sig):
  workdir = str(tmp_path / "interrupted")
  command = _command(digits_data_dir, workdir, *_RESUME_ARGS)
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
  _wait_for(os.path.join(workdir, "checkpoints", "40"), process)
  process.send_signal(sig)
  _, stderr = process.communicate(timeout=120)
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  if sig == signal.SIGKILL:
    assert process.returncode == -signal.SIGKILL
  else:  # SIGTERM (preemption) and SIGINT (Ctrl-C) save the step they reached, then exit
    assert process.returncode == 128 + sig, stderr.decode()[-2000:]
    assert f"{signal.Signals(sig).name}: saved the checkpoint".encode() in stderr
    assert b"Traceback" not in stderr
    assert steps[-1] >= 40 and steps[-1] < 200
  subprocess.run(command, cwd=REPO, env=_env(), check=True, capture_output=True)
  _assert_same_run(workdir, uninterrupted)


def test_cli_rejects_an_unknown_config_key(digits_data_dir, tmp_path):
  result = subprocess.run(_command(digits_data_dir, str(tmp_path / "x"), "--config.totl_steps=5"),
                          cwd=REPO, env=_env(), capture_output=True, text=True)
  assert result.returncode != 0
  assert "'totl_steps'; did you mean 'total_steps'?" in result.stderr
  assert "Traceback" not in result.stderr


def test_source_accuracy_validator_reads_the_held_out_split(make_config, tmp_path, digits_data_dir):
  """The validator's value is the accuracy on `source_val_split`; the evaluation
  split's source accuracy is recorded beside it, not in its place."""
  workdir = str(tmp_path / "run")
  config = make_config(**{"source_split": "train[:80%]", "source_val_split": "train[80%:]"})
  results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  final = results["validators_final"]
  last = [l for l in _jsonl(workdir) if l["kind"] == "validators"][-1]
  assert last["source_eval_accuracy"] == results["source_accuracy"]
  assert last["source_accuracy"] == final["source_accuracy"]
  logits, labels = features.extract(features.from_workdir(workdir, "logits"),
                                    open_domain("digits", "train[80%:]", data_dir=digits_data_dir))
  expected = float(np.mean(np.argmax(logits, -1) == labels))
  np.testing.assert_allclose(final["source_accuracy"], expected, atol=1e-6)
