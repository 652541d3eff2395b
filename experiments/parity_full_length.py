"""ADDA and SHOT at full length, tljax beside a PyTorch restatement of their reference code.

    nice -n 10 python experiments/parity_full_length.py --seeds=0,1,2 \\
        --out=/tmp/tljax/parity_full --to=experiments/results/trajectory_parity.md

`tests/test_trajectory.py` holds every method to its reference step for step
(30 steps of a tiny network, float64). This script checks the project's two
largest adaptation numbers over whole runs, per seed:

1. Digits -> Digits-M, ADDA (the README's +35 points over ERM): the seed's
   ERM network (`configs/source_only.py:digits`), then ADDA from it as the
   sweep runs it (`configs/adda.py:digits`, `method.pretrain_steps=0`, 2,000
   steps; `experiments/grids/digits.py`), in tljax and in the restatement of
   TLlib's `adda.py` (`tests/torch_reference_methods.ADDARun`);
2. SynthDigits -> Digits, SHOT: the seed's ERM network
   (`configs/source_only.py:synth`), then SHOT (`configs/shot.py:synth`, 15
   passes over the target, 435 steps), in tljax and in the restatement of the
   authors' `image_target.py` (`SHOTRun`, with the authors' learning-rate
   schedule, one step ahead of tljax's).

Both sides start from the same weights (the ERM run's classifier and, for
ADDA, the discriminator tljax initialises for the seed) and read the same
batches (tljax's input pipeline, seeds `2 seed` and `2 seed + 1`); both
compute in float32, so the runs part after a few hundred steps and only their
accuracies are compared. The target test accuracies go, per seed, into a
section of `--to` below the table the parity tests generate (and the raw
numbers into `--json`). Runs whose `results.json` exists are not redone.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import sys
import time

from absl import app, flags, logging
import jax
import numpy as np
import torch

try:
  # PyTorch loads triton lazily (its optimizers' first step); triton's native
  # library crashes the process when TensorFlow (which TFDS imports) was loaded
  # before it, so it is loaded first (as tests/conftest.py does).
  import triton  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
# The restatements live beside the parity tests that check them step for step.
sys.path.insert(0, os.path.join(_ROOT, "tests"))

from tljax import train  # noqa: E402  pylint: disable=g-import-not-at-top
from tljax.data import open_domain, pipeline, preprocess  # noqa: E402  pylint: disable=g-import-not-at-top
import torch_reference_methods as methods_torch  # noqa: E402  pylint: disable=g-import-not-at-top

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each: ERM, then tljax and PyTorch).")
_OUT = flags.DEFINE_string("out", "/tmp/tljax/parity_full", "Workdirs of the tljax runs.")
_TO = flags.DEFINE_string("to", "experiments/results/trajectory_parity.md",
                          "Markdown file whose full-length section is (re)written.")
_JSON = flags.DEFINE_string("json", "experiments/results/parity_full_length.json",
                            "Raw per-seed numbers.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (None: the TFDS default).")
_THREADS = flags.DEFINE_integer("torch_threads", 1, "PyTorch intra-op threads.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "KEY=VALUE set in every run's config, e.g. total_steps=20 for a quick check "
    "(the section then reads a shorter run than its title says).")

# Heads the section under the parity table; the parity tests keep what follows it.
SECTION = "## Full-length runs: ADDA and SHOT beside their PyTorch restatements"
# The README's numbers (5 seeds, final step, target test accuracy %): the mean,
# its 95% interval, and the text of the row.
README = {"adda": (71.1, 76.3, "73.7 ± 2.1, 95% interval [71.1, 76.3] (ERM 38.3)"),
          "shot": (88.3, 95.5, "91.9 ± 2.9, 95% interval [88.3, 95.5] (ERM 64.2)")}
EXPERIMENTS = {
    "adda": {"task": "digits", "title": "Digits → Digits-M, ADDA (2,000 steps)",
             "overrides": {"method.pretrain_steps": 0},
             "reference": "TLlib adda.py (`ADDARun`)"},
    "shot": {"task": "synth", "title": "SynthDigits → Digits, SHOT (435 steps)",
             "overrides": {}, "reference": "SHOT image_target.py (`SHOTRun`)"},
}


def _config(module: str, task: str, seed: int, overrides: dict):
  config = importlib.import_module(f"configs.{module}").get_config(task)
  config.seed = seed
  config.data_dir = _DATA_DIR.value
  for item in _OVERRIDES.value:
    key, _, value = item.partition("=")
    overrides = {key: value, **overrides}
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = type(node[leaf])(value) if isinstance(value, str) else value
  return config


def _tljax(config, workdir: str) -> dict:
  """`results.json` of a tljax run (trained unless it exists)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    start = time.time()
    train.train_and_evaluate(config, workdir)
    logging.info("%s: %.0f s", workdir, time.time() - start)
  with open(path) as f:
    return json.load(f)


def _open(config, split: str, name: str):
  return open_domain(name, split, data_dir=config.data_dir, cache=True)


def _in_order(config, domain) -> tuple[np.ndarray, np.ndarray]:
  """Every example of `domain`, in order, with the evaluation preprocessing."""
  images, labels = [], []
  pp = preprocess.from_config(config.data.eval_preprocess, config.data.image_size)
  for batch in pipeline.eval_batches(domain, global_batch_size=config.eval_batch_size,
                                     preprocess=pp, num_threads=config.data.num_threads):
    keep = batch["mask"] > 0
    images.append(batch["image"][keep])
    labels.append(batch["label"][keep])
  return np.concatenate(images), np.concatenate(labels)


def _torch(name: str, config) -> float:
  """The restatement from the tljax run's starting point; target test accuracy (%)."""
  torch.manual_seed(config.seed)
  source_train = _open(config, config.source_split, config.source)
  target_train = _open(config, config.target_split, config.target)
  target_test = _open(config, config.eval_target_split, config.target)
  images, labels = _in_order(config, target_test)
  input_shape = images.shape[1:]
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  # tljax's starting point: the ERM checkpoint (`model.init`), and the
  # discriminator it initialises for the seed.
  setup = train.build(config, source_train.num_classes, mesh, input_shape,
                      num_target_examples=len(target_train))
  variables = jax.device_get({c: setup.state.variables[c] for c in ("params", "batch_stats")})
  kwargs = dict(num_classes=source_train.num_classes, image=input_shape, dtype=torch.float32)
  if name == "adda":
    run = methods_torch.ADDARun(config, **kwargs)
  else:
    split, _ = _in_order(config, target_train)
    run = methods_torch.SHOTRun(config, split=split, schedule_offset=1, **kwargs)
  run.load(variables)

  train_pp = preprocess.from_config(config.data.train_preprocess, config.data.image_size)
  streams = {}
  common = dict(global_batch_size=config.batch_size, preprocess=train_pp,
                num_threads=config.data.num_threads)
  if "source" in setup.method.inputs:
    streams["source"] = pipeline.train_batches(source_train, seed=2 * config.seed, **common)
  streams["target"] = pipeline.train_batches(target_train, seed=2 * config.seed + 1, **common)
  start = time.time()
  for step in range(config.total_steps):
    batch = {domain: next(stream) for domain, stream in streams.items()}
    run.step(step, batch)
  logging.info("PyTorch %s, seed %d: %d steps in %.0f s", name, config.seed, config.total_steps,
               time.time() - start)

  run.world.eval()
  correct = 0
  with torch.no_grad():
    for first in range(0, len(images), config.eval_batch_size):
      x = run.images(images[first:first + config.eval_batch_size])
      if name == "adda":  # the target encoder under the source head
        target = run.world["method"]["target"]
        logits = run.classifier.head(target["bottleneck"](target["backbone"](x)))
      else:
        logits, _ = run.classifier(x)
      correct += int((logits.argmax(1).numpy() == labels[first:first + len(x)]).sum())
  return 100.0 * correct / len(images)


def _signed(x: float) -> str:
  return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _interval(values: list[float]) -> str:
  """Mean and its 95% t-interval."""
  mean = statistics.mean(values)
  if len(values) < 2:
    return _signed(mean)
  t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(values), 2.0)
  half = t * statistics.stdev(values) / math.sqrt(len(values))
  return f"{_signed(mean)} [{_signed(mean - half)}, {_signed(mean + half)}]"


def _section(results: dict) -> str:
  lines = [
      SECTION, "",
      "`nice -n 10 python experiments/parity_full_length.py --seeds="
      f"{','.join(_SEEDS.value)}`: per seed, the seed's ERM network, then the method in tljax",
      "and in the PyTorch restatement of its reference code from the same weights and the",
      "same batches (float32 both, so the runs part after some hundred steps); target test",
      "accuracy (%) at the last step, as the README reports it.", ""]
  for name, spec in EXPERIMENTS.items():
    rows = results.get(name, {})
    if not rows:
      continue
    lines += [f"### {spec['title']}", "",
              f"| seed | ERM | tljax | PyTorch, {spec['reference']} | PyTorch − tljax |",
              "|---|---|---|---|---|"]
    for seed, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
      lines.append(f"| {seed} | {r['erm']:.1f} | {r['tljax']:.1f} | {r['torch']:.1f} | "
                   f"{_signed(r['torch'] - r['tljax'])} |")
    column = lambda key: [r[key] for r in rows.values()]
    mean = lambda key: f"{statistics.mean(column(key)):.1f}"
    low, high, text = README[name]
    inside = [low <= r["torch"] <= high for r in rows.values()]
    lines += [f"| mean | {mean('erm')} | {mean('tljax')} | {mean('torch')} | "
              f"{_interval([r['torch'] - r['tljax'] for r in rows.values()])} |",
              "", f"Paired gain over ERM: tljax {_interval([r['tljax'] - r['erm'] for r in rows.values()])}, "
              f"PyTorch {_interval([r['torch'] - r['erm'] for r in rows.values()])} points. "
              f"README (5 seeds): {text}; {sum(inside)} of {len(inside)} PyTorch runs fall in "
              "that interval.", ""]
  return "\n".join(lines)


def _write(results: dict) -> None:
  with open(_JSON.value, "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  head = ""
  if os.path.exists(_TO.value):
    with open(_TO.value) as f:
      head = f.read()
    head = head.split(SECTION)[0].rstrip("\n") + "\n\n"
  with open(_TO.value, "w") as f:
    f.write(head + _section(results))


def main(argv):
  del argv
  torch.set_num_threads(_THREADS.value)
  results = {}
  if os.path.exists(_JSON.value):
    with open(_JSON.value) as f:
      results = json.load(f)
  # Seed by seed, so that a run stopped early has both comparisons for the same seeds.
  for seed in map(int, _SEEDS.value):
    for name, spec in EXPERIMENTS.items():
      if str(seed) in results.get(name, {}):
        continue
      erm_dir = os.path.join(_OUT.value, spec["task"], f"source_only_seed{seed}")
      erm = _tljax(_config("source_only", spec["task"], seed, {}), erm_dir)
      config = _config(name, spec["task"], seed, {**spec["overrides"], "model.init": erm_dir})
      adapted = _tljax(config, os.path.join(_OUT.value, spec["task"], f"{name}_seed{seed}"))
      row = {"erm": 100 * erm["target_accuracy"], "tljax": 100 * adapted["target_accuracy"],
             "torch": _torch(name, config)}
      logging.info("%s seed %d: %s", name, seed, row)
      results.setdefault(name, {})[str(seed)] = row
      _write(results)
  _write(results)  # a rerun with every seed done rewrites the section from the numbers


if __name__ == "__main__":
  app.run(main)
