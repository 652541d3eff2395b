"""The whole-run benchmark (`benchmarks.end_to_end`) at smoke-test size: both
sides run, and the figures it reports are the runs' own."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_end_to_end_runs_tljax_and_pytorch(tmp_path):
  out = tmp_path / "e2e"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.end_to_end", "--methods=mcc", "--total_steps=3",
       f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.with_suffix(".json").read_text())
  assert report["total_steps"] == 3 and not report["tllib"]
  (row,) = report["rows"]
  assert row["method"] == "mcc"
  ours, theirs = row["tljax"], row["torch"]
  # tljax's parts are its results.json's, measured inside the process the
  # wall time contains; PyTorch's loop ran the same number of steps.
  parts = ours["time_s"]
  assert parts["start_up"] + parts["first_step"] + parts["training_loop"] < ours["wall_s"]
  assert parts["evaluation"] > 0 and parts["checkpoints"] > 0
  assert theirs["loss_modules"] == "torch_reference"
  assert theirs["train_steps_per_second"] * theirs["training_loop_s"] == (
      pytest.approx(2))
  table = out.with_suffix(".md").read_text()
  assert "| mcc |" in table and "benchmarks.torch_reference" in table
