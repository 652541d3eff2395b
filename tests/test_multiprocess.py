"""Multi-process runs on loopback: jax.distributed with CPU (gloo) collectives.

Each process owns its simulated CPU devices and reads only its share of every
global batch; the run must match a single process holding all the devices and
the whole global batch, and must resume from its own checkpoint.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from tljax.workdir import latest_state

_TINY = ["--config=configs/dann.py:digits", "--config.model.backbone_kwargs.widths=(8,8,16)",
         "--config.model.bottleneck_dim=32", "--config.method.hidden_sizes=(32,32)",
         "--config.batch_size=16", "--config.eval_batch_size=64", "--config.log_every=2",
         "--config.eval_every=4", "--config.checkpoint_every=4", "--config.data.num_threads=0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _run(workdir, data_dir, steps, num_processes, devices_per_process=1):
  args = [sys.executable, "-m", "tljax.main", f"--workdir={workdir}", *_TINY,
          f"--config.data_dir={data_dir}", f"--config.total_steps={steps}"]
  if num_processes == 1:
    subprocess.run(args, cwd=REPO, env=_env(devices_per_process), check=True, capture_output=True)
    return
  port = _free_port()
  processes = [subprocess.Popen(
      args + [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
              f"--process_id={i}"],
      cwd=REPO, env=_env(devices_per_process), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for i in range(num_processes)]
  outputs = [p.communicate(timeout=600)[0].decode() for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def _params(workdir):
  state, step = latest_state(workdir)
  flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  return step, {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in flat}


def _max_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def single_process(digits_data_dir, tmp_path_factory):
  """One process with 4 devices, 8 steps (checkpoints at 4 and 8)."""
  workdir = str(tmp_path_factory.mktemp("single"))
  _run(workdir, digits_data_dir, steps=8, num_processes=1, devices_per_process=4)
  return workdir


@pytest.fixture(scope="module")
def two_processes(digits_data_dir, tmp_path_factory):
  """Two processes with 2 devices each, 8 steps, and their outputs."""
  workdir = str(tmp_path_factory.mktemp("multi"))
  outputs = _run(workdir, digits_data_dir, steps=8, num_processes=2, devices_per_process=2)
  return workdir, outputs


def test_processes_match_a_single_process(two_processes, single_process):
  workdir, outputs = two_processes
  step, params = _params(workdir)
  ref_step, ref_params = _params(single_process)
  assert step == ref_step == 8
  assert _max_difference(params, ref_params) < 1e-5
  # Only process 0 writes the result files; the logs agree with the single run.
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(single_process, "results.json")) as f:
    reference = json.load(f)
  assert results["versions"]["devices"] == "4"
  assert abs(results["target_accuracy"] - reference["target_accuracy"]) < 1e-9
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  assert len([l for l in lines if l["kind"] == "eval"]) == 2
  assert "step 8/8" in outputs[0] and "step 8/8" not in outputs[1]


def test_multi_process_run_resumes_from_its_checkpoint(two_processes, single_process,
                                                       digits_data_dir, tmp_path):
  # The two-process run cut back to its checkpoint of step 4, then resumed by
  # two processes: the same end as the single process.
  workdir = str(tmp_path / "resumed")
  shutil.copytree(two_processes[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
  os.remove(os.path.join(workdir, "results.json"))
  assert _params(workdir)[0] == 4
  outputs = _run(workdir, digits_data_dir, steps=8, num_processes=2, devices_per_process=2)
  assert "Resumed from the checkpoint of step 4" in outputs[0]
  step, params = _params(workdir)
  assert step == 8 and _max_difference(params, _params(single_process)[1]) < 1e-5
