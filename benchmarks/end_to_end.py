r"""Whole runs, not steps: tljax's trainer against TLlib's loop in PyTorch, on digits.

    python -m benchmarks.end_to_end --methods=dann,mcc --total_steps=400 \
        [--tllib=PATH/Transfer-Learning-Library] [--out=experiments/results/end_to_end]

For each method, one after the other on an otherwise idle machine:

- tljax: `python -m tljax.main --config=configs/<method>.py:digits` as a user
  runs it (input pipeline, jitted step, logging, the evaluation at the end
  with every validator, checkpoints), `--total_steps` steps;
- PyTorch: `benchmarks.torch_end_to_end`, TLlib's loop (a `DataLoader` per
  domain, forward / backward / SGD / scheduler each iteration, the target
  accuracy at the end) with TLlib's own loss modules when `--tllib` points at
  a Transfer-Learning-Library checkout (else `torch_reference`'s
  restatement), the same network, recipe, batch and data (the digits arrays
  tljax reads, written once to a file for it).

Reports each run's wall time (process start to exit), where it went
(start-up, first step, the loop after it, evaluation; tljax's from its
results.json `time_s`), the loop's ms per step, the final target accuracy,
and the ratios tljax / PyTorch, as a table (stdout, and `--out`.md / .json).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from tljax import train

_METHODS = flags.DEFINE_list("methods", ["dann", "mcc"], "configs/<method>.py:<task> to run.")
_TASK = flags.DEFINE_string("task", "digits", "The configs' task argument.")
_TOTAL_STEPS = flags.DEFINE_integer("total_steps", 400, "Steps (iterations) of each run.")
_TLLIB = flags.DEFINE_string("tllib", None, "Transfer-Learning-Library checkout for the "
                             "PyTorch side's loss modules.")
_OUT = flags.DEFINE_string("out", None, "Also write PREFIX.json and PREFIX.md.")


def _config(method: str):
  """configs/<method>.py:<task> (run from the repository root, as every benchmark)."""
  return importlib.import_module(f"configs.{method}").get_config(_TASK.value)


def _arrays(domain) -> tuple[np.ndarray, np.ndarray]:
  examples = [domain.source[i] for i in range(len(domain))]
  return (np.stack([np.asarray(e["image"]) for e in examples]),
          np.asarray([e["label"] for e in examples], np.int64))


def write_data(path: str, config) -> None:
  """The task's labelled source, unlabelled target and target evaluation
  splits as tljax opens them, for the PyTorch process."""
  domains = train.open_data(config, os.path.dirname(path))
  source_images, source_labels = _arrays(domains.source_train)
  target_images, _ = _arrays(domains.target_train)
  eval_images, eval_labels = _arrays(domains.target_eval)
  np.savez(path, source_images=source_images, source_labels=source_labels,
           target_images=target_images, eval_images=eval_images, eval_labels=eval_labels,
           num_classes=domains.num_classes)


def _timed(command: list[str], log: str) -> float:
  start = time.time()
  with open(log, "w") as f:
    result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
  return time.time() - start


def run_tljax(method: str, root: str) -> dict[str, Any]:
  workdir = os.path.join(root, f"tljax_{method}")
  steps = _TOTAL_STEPS.value
  wall = _timed([sys.executable, "-m", "tljax.main", f"--config=configs/{method}.py:{_TASK.value}",
                 f"--workdir={workdir}", f"--config.total_steps={steps}",
                 f"--config.eval_every={steps}", f"--config.checkpoint_every={steps}"],
                workdir + ".log")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  return {"wall_s": wall, "time_s": results["time_s"],
          "ms_per_step": 1e3 / results["train_steps_per_second"],
          "target_accuracy": results["target_accuracy"]}


def run_torch(method: str, root: str, data: str) -> dict[str, Any]:
  out = os.path.join(root, f"torch_{method}.json")
  command = [sys.executable, "-m", "benchmarks.torch_end_to_end", f"--data={data}",
             f"--config=configs/{method}.py:{_TASK.value}",
             f"--total_steps={_TOTAL_STEPS.value}", f"--out={out}"]
  if _TLLIB.value:
    command.append(f"--tllib={os.path.abspath(_TLLIB.value)}")
  wall = _timed(command, out + ".log")
  with open(out) as f:
    figures = json.load(f)
  return {"wall_s": wall, "ms_per_step": 1e3 / figures["train_steps_per_second"], **figures}


def table(rows: list[dict[str, Any]]) -> str:
  lines = ["| method | tljax s | PyTorch s | ratio | tljax ms/step | PyTorch ms/step | ratio | "
           "tljax: start-up / first step / loop / evaluation s | PyTorch: same | "
           "target acc. tljax / PyTorch |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    ours, theirs = row["tljax"], row["torch"]
    t = ours["time_s"]
    lines.append(
        f"| {row['method']} | {ours['wall_s']:.0f} | {theirs['wall_s']:.0f} | "
        f"{ours['wall_s'] / theirs['wall_s']:.2f} | {ours['ms_per_step']:.1f} | "
        f"{theirs['ms_per_step']:.1f} | {ours['ms_per_step'] / theirs['ms_per_step']:.2f} | "
        f"{t['start_up']:.1f} / {t['first_step']:.1f} / {t['training_loop']:.1f} / "
        f"{t['evaluation'] + t.get('after_loop', 0.0):.1f} | "
        f"{theirs['start_up_s']:.1f} / {theirs['first_step_s']:.2f} / "
        f"{theirs['training_loop_s']:.1f} / {theirs['evaluation_s']:.1f} | "
        f"{100 * ours['target_accuracy']:.1f}% / {100 * theirs['target_accuracy']:.1f}% |")
  return "\n".join(lines)


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as root:
    data = os.path.join(root, "digits.npz")
    write_data(data, _config(_METHODS.value[0]))
    for method in _METHODS.value:
      row = {"method": method, "tljax": run_tljax(method, root)}
      row["torch"] = run_torch(method, root, data)
      rows.append(row)
      print(table([row]).splitlines()[-1], flush=True)
  text = (f"{_TOTAL_STEPS.value} steps per run, task {_TASK.value}; PyTorch's loss modules: "
          f"{'TLlib' if _TLLIB.value else 'benchmarks.torch_reference'}\n\n{table(rows)}\n")
  print(text)
  if _OUT.value:
    with open(_OUT.value + ".json", "w") as f:
      json.dump({"total_steps": _TOTAL_STEPS.value, "task": _TASK.value,
                 "tllib": bool(_TLLIB.value), "rows": rows}, f, indent=2)
    with open(_OUT.value + ".md", "w") as f:
      f.write(f"# Whole runs: tljax vs PyTorch + TLlib\n\n`python -m benchmarks.end_to_end "
              f"{' '.join(sys.argv[1:])}`\n\n{text}")


if __name__ == "__main__":
  app.run(main)
