"""Runs that cannot be mixed up, lose work or lie: bad input refused in one line
with the workdir untouched (through the command line, or through the library
where the command line adds nothing), the workdir lock, the run identity on
resume, what a resumed run restores from its checkpoint (not from its log),
checkpoint fallback, and the README's own-domain example."""

import concurrent.futures
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest

from conftest import REPO, set_fields
from tljax import config_checks
from tljax import main as main_lib
from tljax import train
from tljax import workdir as workdir_lib
from tljax.data import open_domain, registry

# The tiny run every test here starts from, as config fields and as flags.
_TINY_FIELDS = {"model.backbone_kwargs.widths": (8, 8, 16), "model.bottleneck_dim": 32,
                "batch_size": 16, "eval_batch_size": 128, "log_every": 2,
                "data.num_threads": 0, "total_steps": 4, "eval_every": 2, "checkpoint_every": 2}
_TINY = [f"--config.{k}={'(' + ','.join(map(str, v)) + ')' if isinstance(v, tuple) else v}"
         for k, v in _TINY_FIELDS.items()]


def _env(**extra):
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **extra}


def _cli(data_dir, workdir, *extra, config="configs/source_only.py:digits", cwd=REPO, env=None):
  command = [sys.executable, "-m", "tljax.main", f"--config={config}", f"--workdir={workdir}",
             f"--config.data_dir={data_dir}", *_TINY, *extra]
  return subprocess.run(command, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                        timeout=600)


def _config(data_dir, name="source_only", **fields):
  """`configs/<name>.py:digits` with `_TINY_FIELDS`: the library's view of `_cli`'s run."""
  sys.path.insert(0, str(REPO))
  config = importlib.import_module(f"configs.{name}").get_config("digits")
  set_fields(config, {**_TINY_FIELDS, "data_dir": data_dir, **fields})
  return config


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


# One case of each kind of error the command line meets (a config value, a file,
# a checkpoint, a changed run, an empty domain, a config that does not load),
# each in a process of its own; LIBRARY_REFUSALS below holds the other refusals.
# (name, flags, on the finished workdir?, regex of the one-line error[, options]).
# Options: cwd="elsewhere" runs from outside the repository, with nothing but the
# tljax package importable.
BAD_INPUTS = [
    ("batch_size_zero", ["--config.batch_size=0"], False, r"config\.batch_size=0 is invalid"),
    ("data_dir_is_a_file", ["--config.data_dir={file}"], False, r"is a file"),
    ("corrupt_safetensors", ["--config.model.init={safetensors}"], False,
     r"not a valid safetensors file"),
    ("truncated_pth", ["--config.model.init={pth}"], False, r"truncated or corrupt torch file"),
    ("changed_seed_on_finished_run", ["--config.seed=7"], True,
     r"holds a run with another config \(by its run\.json\): seed: 0 -> 7.*--allow_changes=seed"),
    ("other_method_on_finished_run", ["--config=configs/mcc.py:digits"], True,
     r"another config .*method\.name: 'source_only' -> 'mcc'"),
    # Issue 32: an empty domain.
    ("empty_source_folder", ["--config.source=image_folder:{empty_folder}"], False,
     r"image_folder:.*empty_folder has no class folders \(it is empty\)\. Expected <root>/<class>"),
    # Issue 33, case 14 and 12: config files that do not load, or load from elsewhere.
    ("unknown_task", ["--config=configs/source_only.py:nonexistent"], False,
     r"--config=configs/source_only\.py:nonexistent: the config does not load: ValueError: "
     r"unknown task 'nonexistent'"),
    ("missing_config_file", ["--config=configs/no_such_method.py:digits"], False,
     r"the config file does not exist \(No such file or directory: 'configs/no_such_method\.py'"),
    ("config_by_absolute_path_from_elsewhere",
     [f"--config={REPO}/configs/source_only.py:digits", "--config.batch_size=0"], False,
     r"config\.batch_size=0 is invalid", {"cwd": "elsewhere"}),
]


@pytest.mark.parametrize("name, flags, on_finished, message, options",
                         [(*case, {})[:5] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_leaves_the_workdir_untouched(
    name, flags, on_finished, message, options, digits_data_dir, finished, tmp_path):
  files = {"file": str(tmp_path / "a_file"), "safetensors": str(tmp_path / "w.safetensors"),
           "pth": str(tmp_path / "w.pth"), "empty_folder": str(tmp_path / "empty_folder")}
  with open(files["file"], "w") as f:
    f.write("not a directory")
  os.makedirs(files["empty_folder"])
  if any("safetensors" in f for f in flags):
    _corrupt_safetensors(files["safetensors"])
  if any("pth" in f for f in flags):
    _truncated_pth(files["pth"])
  flags = [f.format(**files) for f in flags]
  process = {}
  if options.get("cwd") == "elsewhere":
    # The package alone on the path, as an installed tljax: `configs` must be
    # found from the config file's own location.
    packages = tmp_path / "packages"
    packages.mkdir()
    (packages / "tljax").symlink_to(REPO / "tljax")
    (tmp_path / "elsewhere").mkdir()
    process = {"cwd": str(tmp_path / "elsewhere"), "env": _env(PYTHONPATH=str(packages))}
  if on_finished:
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished, workdir)
  else:
    workdir = str(tmp_path / "fresh")
  before = _snapshot(workdir)
  config = [f for f in flags if f.startswith("--config=")]
  extra = [f for f in flags if not f.startswith("--config=")]
  kwargs = {"config": config[0][len("--config="):]} if config else {}
  result = _cli(digits_data_dir, workdir, *extra, **kwargs, **process)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert re.search(message, lines[0]), lines[0]
  assert _snapshot(workdir) == before  # nothing written: not config.json, not a lock


# ----------------------------------------------------------------------------
# Bad input through the library: the same refusals where the command line adds
# nothing (it prints the message of any of `_PRINTED` as its one line).
# ----------------------------------------------------------------------------


_PRINTED = (ValueError, OSError, train.NonFiniteError, workdir_lib.WorkdirInUseError)


def _png(path, size=(8, 8), value=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _domains(root):
  """Folders that are no domain, by name (issue 32, item 2)."""
  os.makedirs(root / "empty")
  os.makedirs(root / "no_images" / "cat")
  (root / "no_images" / "cat" / "notes.txt").write_text("not an image")
  os.makedirs(root / "unmatched" / "dog")
  _png(str(root / "unmatched" / "dog" / "0.png"))
  (root / "unmatched" / "classes.txt").write_text("cat\nbird\n")
  os.makedirs(root / "unmatched_list")  # classes, and no folder for any of them
  (root / "unmatched_list" / "classes.txt").write_text("cat\nbird\n")
  _png(str(root / "unmatched_list" / "stray.png"))
  os.makedirs(root / "unreadable" / "cat")
  (root / "unreadable" / "cat" / "0.png").write_bytes(b"not a png")
  os.makedirs(root / "plain_dir")


def _remove(*names):
  def prepare(workdir):
    for name in names:
      os.remove(os.path.join(workdir, name))
  return prepare


def _write(name, text):
  def prepare(workdir):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, name), "w") as f:
      f.write(text)
  return prepare


# (name, config file, fields, on the finished workdir?, prepare(workdir), allow_changes,
#  regex of the message). `{domains}`: the folders of `_domains`.
LIBRARY_REFUSALS = [
    # Config values, a backbone, a changed run and a source-free method's missing
    # start: refusals the command line prints as its one line (BAD_INPUTS shows
    # that for each kind of error).
    ("eval_every_zero", "source_only", {"eval_every": 0}, False, None, (),
     r"config\.eval_every=0 is invalid"),
    ("negative_learning_rate", "source_only", {"optimizer.learning_rate": -0.1}, False, None, (),
     r"config\.optimizer\.learning_rate=-0\.1 is invalid: it must be a finite number > 0"),
    ("negative_total_steps", "source_only", {"total_steps": -5}, False, None, (),
     r"config\.total_steps=-5 is invalid"),
    ("unknown_backbone_keyword", "source_only", {"model.backbone_kwargs.bogus": 1}, False, None,
     (), r"backbone .small_cnn. does not take bogus; .*may set .*widths"),
    ("unknown_backbone_on_finished_run", "source_only", {"model.name": "resnet9"}, True, None, (),
     r"unknown backbone 'resnet9'"),
    ("changed_learning_rate_on_finished_run", "source_only", {"optimizer.learning_rate": 0.02},
     True, None, (), r"optimizer\.learning_rate: 0\.01 -> 0\.02"),
    ("shot_without_a_source_model", "shot", {}, False, None, (),
     r"config\.model\.init is empty, but method 'shot' \(source-free.*python -m tljax\.main "
     r"--config=configs/source_only\.py:digits --workdir=/tmp/tljax/source. then .python -m "
     r"tljax\.main --config=configs/shot\.py:digits .*--config\.model\.init=/tmp/tljax/source"),
    # Issue 32, item 1: a trained start, declared by a method or by a config.
    ("adda_without_pretraining_or_init", "adda", {"method.pretrain_steps": 0}, False, None, (),
     r"method 'adda' \(with method\.pretrain_steps=0 it skips its source pre-training\) starts "
     r"from a trained model.*configs/source_only\.py:digits --workdir=/tmp/tljax/pre. then "
     r".*--config\.model\.init=/tmp/tljax/pre --config\.method\.pretrain_steps=0"),
    ("finetuning_config_without_a_pretrained_model", "l2_sp", {}, False, None, (),
     r"but this config starts from a trained model.*source_only\.py:digits.*then .*configs/"
     r"l2_sp\.py:digits .*--config\.model\.init_required=False to train from a random start"),
    # Issue 32, item 2: domains that hold nothing.
    ("folder_without_images", "source_only", {"source": "image_folder:{domains}/no_images"}, False,
     None, (), r"image_folder:.*no_images: no images in the class folders"),
    ("class_list_matching_no_folder", "source_only",
     {"source": "image_folder:{domains}/unmatched_list"}, False, None, (),
     r"none of the 2 classes of .*unmatched_list/classes\.txt \(cat, bird"),
    ("class_list_without_a_folder", "source_only", {"source": "image_folder:{domains}/unmatched"},
     False, None, (), r"folders \['dog'\] are not in .*unmatched/classes\.txt"),
    ("missing_folder", "source_only", {"source": "image_folder:{domains}/missing"}, False, None,
     (), r"image_folder:.*missing is not a directory"),
    ("every_image_unreadable", "source_only",
     {"source": "image_folder:{domains}/unreadable", "data.skip_corrupt": True}, False, None, (),
     r"every one of its 1 images is unreadable \(e\.g\. .*unreadable/cat/0\.png\)"),
    ("empty_split", "source_only", {"eval_target_split": "test[:0]"}, False, None, (),
     r"'digits_m' split 'test\[:0\]' holds no examples \(the dataset has test: 298, train: 598\)"),
    # Issue 33, case 1: a batch larger than its split.
    ("batch_larger_than_its_split", "source_only", {"batch_size": 100000}, False, None, (),
     r"config\.batch_size=100000 is larger than config\.source_split \(digits:train, 601 "
     r"examples\)"),
    # Case 3: pre-training that never ends.
    ("total_steps_within_pretraining", "bsp", {"method.pretrain_steps": 4}, False, None, (),
     r"config\.total_steps=4 ends the run within config\.method\.pretrain_steps=4"),
    ("total_steps_within_a_terms_pretraining", "dann", {"method.pretrain_steps": 10}, False,
     None, (), r"config\.total_steps=4 ends the run within config\.method\.pretrain_steps=10"),
    # Case 5: another method allowed on the checkpoints, which do not restore: run.json and
    # config.json stay as they were, so the original command still resumes.
    ("other_method_allowed_but_unrestorable", "dann", {}, True, None, ("all",),
     r"no checkpoint in .* restores"),
    # Case 6: run.json lost; config.json still tells the run.
    ("changed_run_without_run_json", "source_only", {"seed": 7, "batch_size": 8}, True,
     _remove("run.json"), (),
     r"another config \(by its config\.json \(run\.json is missing\)\): batch_size: 16 -> 8; "
     r"seed: 0 -> 7"),
    ("checkpoints_without_identity_files", "source_only", {}, True,
     _remove("run.json", "config.json"), (), r"holds checkpoints but neither run\.json nor "
     r"config\.json"),
    # Case 10: fields checked at start-up, not at the first evaluation or never.
    ("unknown_validator", "source_only", {"validation.validators": ("snd", "accuracy")}, False,
     None, (), r"config\.validation\.validators=\('snd', 'accuracy'\) is invalid: it must be a "
     r"tuple of validator names"),
    ("no_validation_examples", "source_only", {"validation.max_examples": 0}, False, None, (),
     r"config\.validation\.max_examples=0 is invalid"),
    ("zero_width_discriminator", "dann", {"method.hidden_sizes": (0,)}, False, None, (),
     r"config\.method\.hidden_sizes=\(0,\) is invalid: it must be a tuple of integers >= 1"),
    ("nan_reversal_coefficient", "dann", {"method.grl_hi": float("nan")}, False, None, (),
     r"config\.method\.grl_hi=nan is invalid: it must be a finite number"),
    ("nan_shot_beta", "shot", {"method.beta": float("nan")}, False, None, (),
     r"config\.method\.beta=nan is invalid"),
    ("negative_clustering_rounds", "shot", {"method.clustering_rounds": -1}, False, None, (),
     r"config\.method\.clustering_rounds=-1 is invalid: it must be an integer >= 1"),
    # Case 11: someone else's files and no run.json.
    ("foreign_metrics", "source_only", {}, False, _write("metrics.jsonl", '{"loss": 1}\n'), (),
     r"holds metrics\.jsonl but no run\.json: files of another run or program"),
    ("foreign_results", "source_only", {}, False, _write("results.json", "{}"), (),
     r"holds results\.json but no run\.json"),
    # Case 16: a finished run cannot be shortened after the fact.
    ("total_steps_below_the_checkpoint", "source_only", {"total_steps": 2}, True, None, (),
     r"config\.total_steps=2 is below the step of the checkpoint in .* \(4\).*"
     r"--config\.total_steps=4"),
    # Case 17: init paths that are no checkpoint.
    ("init_is_a_missing_directory", "source_only", {"model.init": "{domains}/gone/"}, False,
     None, (), r"config\.model\.init=.*gone/' does not exist: pass a checkpoint file"),
    ("init_is_a_plain_directory", "source_only", {"model.init": "{domains}/plain_dir"}, False,
     None, (), r"plain_dir' is a directory but not a tljax run's workdir"),
]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
  root = tmp_path_factory.mktemp("domains")
  _domains(root)
  return str(root)


@pytest.mark.parametrize("name, config_name, fields, on_finished, prepare, allow, message",
                         LIBRARY_REFUSALS, ids=[case[0] for case in LIBRARY_REFUSALS])
def test_bad_input_is_refused_before_anything_is_written(
    name, config_name, fields, on_finished, prepare, allow, message, digits_data_dir, finished,
    domains, tmp_path):
  fields = {k: v.format(domains=domains) if isinstance(v, str) else v for k, v in fields.items()}
  config = _config(digits_data_dir, config_name, **fields)
  workdir = str(tmp_path / "run")
  if on_finished:
    shutil.copytree(finished, workdir)
  if prepare is not None:
    prepare(workdir)
  before = _snapshot(workdir)
  with pytest.raises(_PRINTED) as error:
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1], allow_changes=allow)
  assert "\n" not in str(error.value), str(error.value)
  assert re.search(message, str(error.value)), str(error.value)
  assert _snapshot(workdir) == before  # nothing written or lost


@pytest.mark.parametrize("section, field", [("model", "feature_dropout"), ("data", "label_map"),
                                            (None, "label_kind")])
def test_a_config_that_lacks_a_field_is_one_line(section, field, make_config, tmp_path):
  """The library reads config fields directly (their defaults are written in
  configs/default.py only): a config without one is refused at start-up,
  naming it, with nothing written."""
  config = make_config()
  del (config[section] if section else config)[field]
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  dotted = f"{section}.{field}" if section else field
  assert re.fullmatch(rf"the config lacks {re.escape(dotted)}: configs/default\.py defines "
                      r"every field .*", str(error.value)), str(error.value)
  assert not os.path.exists(workdir)


def test_the_checked_fields_are_those_configs_default_defines():
  """`config_checks.REQUIRED_FIELDS` names every field of every task's default
  config (but the free keys of the keyword dicts and the method's own)."""
  sys.path.insert(0, str(REPO))
  default = importlib.import_module("configs.default")

  def fields(node, prefix=""):
    out = set()
    for key, value in node.items():
      name = prefix + key
      if (isinstance(value, ml_collections.ConfigDict) and name not in open_dicts
          and not name.endswith("_preprocess")):
        out |= fields(value, name + ".")
      else:
        out.add(name)
    return out

  open_dicts = ("method", "model.backbone_kwargs")
  for task in default.TASKS:
    assert fields(default.get_config(task)) == set(config_checks.REQUIRED_FIELDS), task


def test_a_run_that_failed_before_its_first_checkpoint_takes_the_fix(
    digits_data_dir, tmp_path, monkeypatch):
  """Issue 33, case 13: a run that stops before its first checkpoint leaves an
  identity but nothing to resume; the corrected command starts afresh."""
  workdir = str(tmp_path / "run")

  def fail(*args, **kwargs):
    raise ValueError("the first step failed")

  with monkeypatch.context() as patch:
    patch.setattr(train, "_train", fail)
    with pytest.raises(ValueError, match="first step failed"):
      train.train_and_evaluate(_config(digits_data_dir), workdir, devices=jax.devices()[:1])
  assert os.path.exists(os.path.join(workdir, "run.json"))
  assert not workdir_lib.has_checkpoints(workdir)
  fixed = _config(digits_data_dir, batch_size=8, total_steps=2)  # another identity
  results = train.train_and_evaluate(fixed, workdir, devices=jax.devices()[:1])
  assert results["step"] == 2 and results["config"]["batch_size"] == 8
  with open(os.path.join(workdir, "run.json")) as f:
    assert json.load(f)["identity"]["batch_size"] == 8


def test_a_data_dir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  """Issue 33, case 14: a dataset to build into a read-only data dir (emulated:
  these tests may run as root, whom permissions do not stop)."""
  data_dir = tmp_path / "read_only"
  data_dir.mkdir()
  real_access = os.access
  monkeypatch.setattr(registry.os, "access", lambda path, mode: False if str(path).startswith(
      str(data_dir)) else real_access(path, mode))
  with pytest.raises(PermissionError) as error:
    open_domain("digits", "train", data_dir=str(data_dir))
  assert re.search(rf"digits is not built in the data dir yet, and {data_dir} is not writable.*"
                   r"set --config\.data_dir to a directory you can write to", str(error.value))
  assert "\n" not in str(error.value) and not os.listdir(data_dir)


def test_ctrl_c_during_start_up_is_one_line(digits_data_dir, tmp_path):
  """Issue 33, case 14: Ctrl-C before the training loop (which saves a checkpoint
  at the first one) ends in one line, exit 130, the lock released."""
  workdir = str(tmp_path / "run")
  command = [sys.executable, "-m", "tljax.main", "--config=configs/source_only.py:digits",
             f"--workdir={workdir}", f"--config.data_dir={digits_data_dir}", *_TINY]
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
  lines = []
  for line in process.stderr:  # the first log line of the run: it is starting up
    lines.append(line)
    if "tljax 0." in line or "Mesh:" in line:
      process.send_signal(signal.SIGINT)
      break
  rest = process.stderr.read()
  process.wait(timeout=600)
  stderr = "".join(lines) + rest
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert errors == ["error: interrupted (Ctrl-C); rerun the same command to resume from the "
                    "latest checkpoint, if there is one"], stderr[-3000:]
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


def test_a_swallowed_ctrl_c_during_start_up_still_stops_the_run():
  """A Ctrl-C whose KeyboardInterrupt a library swallowed during start-up is
  noted by the CLI's handler; the loop stops on it before its first step
  instead of training on (as the test above once saw, under load)."""
  previous = signal.getsignal(signal.SIGINT)
  handler = main_lib._StartUpInterrupt()  # pylint: disable=protected-access
  try:
    signal.signal(signal.SIGINT, handler)
    with pytest.raises(KeyboardInterrupt):
      handler(signal.SIGINT, None)  # what a Ctrl-C runs; suppose a library ate it
    assert handler.received
    with pytest.raises(KeyboardInterrupt):
      train._StopRequest().install()  # pylint: disable=protected-access
    # Nothing of the loop's was installed: the start-up handler is still there.
    assert signal.getsignal(signal.SIGINT) is handler
    handler.received = False  # no Ctrl-C: the loop takes over SIGINT
    stop = train._StopRequest().install()  # pylint: disable=protected-access
    assert signal.getsignal(signal.SIGINT) == stop._handle  # pylint: disable=protected-access
    stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is handler
  finally:
    signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.LOCK_NAME), "w") as f:
    json.dump(holder, f)


def test_live_lock_refuses_a_second_run(make_config, tmp_path):
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
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  workdir = str(tmp_path / "stale")
  _write_lock(workdir, run="killed", host=socket.gethostname(), pid=dead.pid, since="then")
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(make_config(total_steps=2, eval_every=2, checkpoint_every=2),
                           workdir, devices=jax.devices()[:1])
  assert any("Taking over the lock" in r.getMessage() for r in caplog.records)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


@pytest.mark.parametrize("content", ["", '{"run": "x", "ho', '"a string"'],
                         ids=["empty", "cut_short", "not_a_lock"])
def test_an_unreadable_lock_file_is_taken_over_after_a_grace_period(content, tmp_path, caplog,
                                                                    monkeypatch):
  """Issue 33, case 15: an empty lock (a run killed as it created it) is named and
  taken over once it is `LOCK_GRACE_S` old, not refused forever."""
  monkeypatch.setattr(workdir_lib, "LOCK_GRACE_S", 0.5)
  caplog.set_level(logging.WARNING)
  path = tmp_path / workdir_lib.LOCK_NAME
  path.write_text(content)
  start = time.time()
  lock = workdir_lib.WorkdirLock(str(tmp_path), "me").acquire()
  assert time.time() - start >= 0.4  # a fresh one gets the grace period first
  assert any(f"Taking over the lock {path}: it is empty or unreadable" in r.getMessage()
             for r in caplog.records)
  assert json.loads(path.read_text())["pid"] == os.getpid()
  lock.release()
  # An old one is taken over at once.
  path.write_text(content)
  os.utime(path, (time.time() - 60, time.time() - 60))
  start = time.time()
  workdir_lib.WorkdirLock(str(tmp_path), "me").acquire().release()
  assert time.time() - start < 0.4 and not path.exists()


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
  # An explicit override is recorded, with the step it was made at.
  changed = dict(make_config(**{"optimizer.learning_rate": 0.02}).optimizer)
  allowed = train.train_and_evaluate(
      make_config(**{"optimizer.learning_rate": 0.02, "total_steps": 6, "eval_every": 2,
                     "checkpoint_every": 2}),
      workdir, devices=jax.devices()[:1], allow_changes=("optimizer.learning_rate",))
  record = [{"step": 4, "field": "optimizer.learning_rate", "from": 0.01,
             "to": changed["learning_rate"]}]
  assert allowed["config_changes_allowed_on_resume"] == record
  assert first["step"] == 2 and allowed["step"] == 6
  # A later resume with the changed config keeps the record (issue 33, case 8).
  again = train.train_and_evaluate(
      make_config(**{"optimizer.learning_rate": 0.02, "total_steps": 8, "eval_every": 2,
                     "checkpoint_every": 2}), workdir, devices=jax.devices()[:1])
  assert again["step"] == 8 and again["config_changes_allowed_on_resume"] == record
  with open(os.path.join(workdir, "run.json")) as f:
    assert json.load(f)["changes"] == record


# ----------------------------------------------------------------------------
# Checkpoint fallback.
# ----------------------------------------------------------------------------


def _largest_file(path):
  files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
  return max(files, key=os.path.getsize)


def _flip_bytes(path):
  """Inverts bytes in the middle of a file, keeping its size (a disk or copy fault)."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    f.seek(0)
    f.write(data)


@pytest.mark.parametrize("fault", ["truncated", "flipped_bytes"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(fault, make_config, tmp_path,
                                                                  caplog):
  """A truncated checkpoint fails to restore; one whose bytes changed restores
  without an error unless its checksums catch it (issue 33, case 2)."""
  config = make_config(total_steps=4, eval_every=2, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  reference, _ = workdir_lib.latest_state(workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    reference_results = json.load(f)
  os.remove(os.path.join(workdir, "results.json"))
  victim = _largest_file(os.path.join(workdir, "checkpoints", "4", train.STATE_ITEM))
  if fault == "truncated":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 3)
  else:
    _flip_bytes(victim)
  caplog.set_level(logging.WARNING)
  results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert any("does not restore" in r.getMessage() for r in caplog.records)
  if fault == "flipped_bytes":
    assert any("differ from what was saved" in r.getMessage() for r in caplog.records)
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


def test_a_nan_right_after_a_resume_names_the_checkpoint(make_config, tmp_path):
  """Issue 33, case 2: a run that stops at a NaN at the first step after a
  resume says which checkpoint it resumed from, and how to skip it."""
  workdir = str(tmp_path / "run")
  # A learning rate this large leaves step 1 finite and step 2 not.
  diverging = {"optimizer.learning_rate": 1e12, "eval_every": 1, "checkpoint_every": 1}
  train.train_and_evaluate(make_config(total_steps=1, **diverging), workdir,
                           devices=jax.devices()[:1])
  with pytest.raises(train.NonFiniteError) as error:
    train.train_and_evaluate(make_config(total_steps=3, **diverging), workdir,
                             devices=jax.devices()[:1])
  assert re.search(r"step 2: .* not finite at the first step after resuming from the checkpoint "
                   rf"of step 1 \({re.escape(workdir)}/checkpoints/1\), which may be damaged; move "
                   r"it into unreadable_checkpoints/", str(error.value)), str(error.value)


# ----------------------------------------------------------------------------
# What a resumed run decides comes from its checkpoint, not from its log.
# ----------------------------------------------------------------------------


def _run_until(config, workdir, stop_at=None):
  """Trains; with `stop_at`, as if SIGTERM arrived during step `stop_at` (the run
  saves that step and exits, as on a preemption)."""
  if stop_at is None:
    return train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  original = train.PhasedStep.__call__

  def step(self, state, batch, step=None):
    if step is not None and step + 1 == stop_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, state, batch, step)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train.PhasedStep, "__call__", step)
    with pytest.raises(SystemExit):
      train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  return None


def test_selection_is_restored_from_the_checkpoint_not_from_the_log(make_config, tmp_path,
                                                                   caplog):
  """Issue 27, item 3 (and 33, case 9): the validators' history is saved with
  each checkpoint; deleting metrics.jsonl, or cutting its last line short,
  between a stop and a resume changes nothing the run selects or keeps."""
  config = make_config(total_steps=8, eval_every=2, checkpoint_every=2, keep_checkpoints=1)
  reference_dir, workdir = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
  reference = _run_until(config, reference_dir)
  _run_until(config, workdir, stop_at=3)
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  _run_until(config, workdir, stop_at=5)
  log = os.path.join(workdir, "metrics.jsonl")
  with open(log, "r+b") as f:
    f.truncate(os.path.getsize(log) - 10)  # a run killed while writing a line
  caplog.set_level(logging.WARNING)
  resumed = _run_until(config, workdir)
  assert any(f"{log}:" in r.getMessage() and "dropped a line that does not parse"
             in r.getMessage() for r in caplog.records)
  for key in ("selected", "oracle_best", "selected_checkpoints", "validator_rank_correlation",
              "target_accuracy"):
    assert resumed[key] == reference[key], key
  assert len(reference["selected_checkpoints"]) > 0
  listing = lambda d: sorted(os.listdir(os.path.join(d, "checkpoints")))
  assert listing(workdir) == listing(reference_dir)
  assert listing(workdir) == sorted(map(str, set(reference["selected_checkpoints"]) | {8}))


def test_a_workdir_from_before_the_run_state_still_resumes(make_config, tmp_path, caplog,
                                                         monkeypatch):
  """Checkpoints that hold the train state alone, and a run.json that holds the
  identity alone (as tljax wrote them before), resume: the validators' records
  then come from metrics.jsonl, as they did, and select what an uninterrupted
  run does."""
  config = make_config(total_steps=4, eval_every=1, checkpoint_every=2, keep_checkpoints=1)
  reference = _run_until(config, str(tmp_path / "uninterrupted"))
  workdir = str(tmp_path / "old")

  def state_alone(manager, step, state, selection, *, force=False):
    del selection
    manager.save(step, args=ocp.args.Composite(**{train.STATE_ITEM: ocp.args.StandardSave(state)}),
                 force=force)

  with monkeypatch.context() as patch:
    patch.setattr(train, "_save", state_alone)
    _run_until(config, workdir, stop_at=2)
  assert os.listdir(os.path.join(workdir, "checkpoints", "2")).count(train.RUN_STATE_ITEM) == 0
  path = os.path.join(workdir, "run.json")
  with open(path) as f:
    identity = json.load(f)["identity"]
  with open(path, "w") as f:
    json.dump(identity, f)
  caplog.set_level(logging.WARNING)
  resumed = _run_until(config, workdir)
  assert any("predates the validators' records" in r.getMessage() for r in caplog.records)
  for key in ("selected", "oracle_best", "validator_rank_correlation", "target_accuracy"):
    assert resumed[key] == reference[key], key


# ----------------------------------------------------------------------------
# Image lists: the images, not only the list, make a build.
# ----------------------------------------------------------------------------


def test_an_image_list_is_rebuilt_when_a_listed_image_changes(tmp_path):
  """Issue 33, case 4: a truncated and a deleted image make a new build (which
  names them), not a silent reuse of the old one."""
  root = tmp_path / "mine"
  for label, name in enumerate(("cat", "dog")):
    for i in range(3):
      _png(str(root / name / f"{i}.png"), value=40 * i + label)
  listing = root / "list.txt"
  listing.write_text("".join(f"{name}/{i}.png {label}\n" for label, name in enumerate(("cat", "dog"))
                             for i in range(3)))
  data_dir = str(tmp_path / "tfds")
  assert len(open_domain(f"image_list:{listing}", "train", data_dir=data_dir)) == 6
  truncated, deleted = root / "cat" / "1.png", root / "dog" / "2.png"
  with open(truncated, "r+b") as f:
    f.truncate(20)
  os.remove(deleted)
  with pytest.raises(ValueError, match=rf"cannot read image ({truncated}|{deleted})"):
    open_domain(f"image_list:{listing}", "train", data_dir=data_dir)
  rebuilt = open_domain(f"image_list:{listing}", "train", data_dir=data_dir, skip_corrupt=True)
  assert len(rebuilt) == 4


# ----------------------------------------------------------------------------
# Your own domains, as the README shows them.
# ----------------------------------------------------------------------------


def _image_folder(root, seed):
  """Three classes of 32x32 PNGs, each class a different stripe pattern."""
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


@pytest.mark.parametrize("command, message", [
    (["tljax.analyze", "--workdir={missing}"],
     r"^error: '.*missing' has no config\.json: pass the workdir of a tljax run$"),
    (["tljax.shallow", "--features={missing}.npz", "--out={out}"],
     r"^error: --features=.*missing\.npz is not a file: pass an \.npz holding source_features"),
    (["tljax.models.convert", "--model=resnet18", "--input={missing}.pth", "--output={out}.npz"],
     r"^error: --input=.*missing\.pth is not a file: pass the checkpoint to convert"),
], ids=["analyze", "shallow", "convert"])
def test_the_other_commands_refuse_a_missing_input_in_one_line(command, message, tmp_path):
  paths = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "out")}
  result = subprocess.run([sys.executable, "-m", *[c.format(**paths) for c in command]],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and re.search(message, lines[0]), result.stderr[-3000:]
  assert not os.path.exists(paths["out"]) and not os.path.exists(paths["out"] + ".npz")
