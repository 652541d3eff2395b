r"""K seeds in one process (`--config.num_seeds=K`) against K separate runs.

    python -m benchmarks.seeds --config=configs/dann.py:digits --seeds=5 \
        --total_steps=500 [--out=experiments/results/num_seeds.json]

Runs, one after the other, as a user would (`python -m tljax.main`, each a
fresh process, the machine's cores to itself): the K single runs of seeds
0..K-1, then one run of `--config.num_seeds=K`. Reports each one's wall time
(process start to exit) and the training loop's steps/s from its
results.json, the ratio of the batched run to the K runs, and checks that
every seed's final target measure is the same in both (each seed's
trajectory is its single run's: to the bit with the CPU's unrolled step, to
rounding with `vmap`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string("config", "configs/dann.py:digits", "Config (file:arg).")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds K.")
_TOTAL_STEPS = flags.DEFINE_integer("total_steps", 500, "Steps of each run.")
_BATCHING = flags.DEFINE_string("seed_batching", "auto", "config.seed_batching.")
_EXTRA = flags.DEFINE_list("override", [], "More --config.<field>=<value> overrides, "
                           "comma-separated, for every run.")
_OUT = flags.DEFINE_string("out", None, "Also write the figures here (JSON).")


def _run(workdir: str, *overrides: str) -> float:
  command = [sys.executable, "-m", "tljax.main", f"--config={_CONFIG.value}",
             f"--workdir={workdir}", f"--config.total_steps={_TOTAL_STEPS.value}",
             f"--config.eval_every={max(_TOTAL_STEPS.value // 2, 1)}",
             *(f"--config.{o}" for o in _EXTRA.value), *overrides]
  start = time.time()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.time() - start


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def main(argv):
  del argv
  seeds = range(_SEEDS.value)
  with tempfile.TemporaryDirectory() as root:
    singles = {}
    for seed in seeds:
      workdir = os.path.join(root, "single", f"seed{seed}")
      singles[seed] = {"wall_s": _run(workdir, f"--config.seed={seed}")}
      singles[seed].update(_results(workdir))
      print(f"single run, seed {seed}: {singles[seed]['wall_s']:.1f} s", flush=True)
    batched_dir = os.path.join(root, "batched")
    batched_wall = _run(batched_dir, "--config.seed=0", f"--config.num_seeds={_SEEDS.value}",
                        f"--config.seed_batching={_BATCHING.value}")
    batched = {seed: _results(os.path.join(batched_dir, f"seed{seed}")) for seed in seeds}
  singles_wall = sum(s["wall_s"] for s in singles.values())
  same = {seed: singles[seed]["primary_metric"]["value"] == batched[seed]["primary_metric"]["value"]
          for seed in seeds}
  figures = {
      "config": _CONFIG.value, "seeds": _SEEDS.value, "total_steps": _TOTAL_STEPS.value,
      "seed_batching": _BATCHING.value, "overrides": _EXTRA.value,
      "separate_runs_wall_s": singles_wall,
      "separate_runs_steps_per_s": [singles[s]["train_steps_per_second"] for s in seeds],
      "num_seeds_wall_s": batched_wall,
      "num_seeds_steps_per_s": batched[0]["train_steps_per_second"],
      "ratio": batched_wall / singles_wall,
      "primary_metric": {str(s): [singles[s]["primary_metric"]["value"],
                                  batched[s]["primary_metric"]["value"]] for s in seeds},
      "same_result_every_seed": all(same.values()),
  }
  print(f"{_SEEDS.value} separate runs: {singles_wall:.0f} s; num_seeds={_SEEDS.value}: "
        f"{batched_wall:.0f} s ({100 * figures['ratio']:.0f}% of the separate runs); loop "
        f"steps/s {figures['num_seeds_steps_per_s']:.2f} for all seeds against "
        f"{min(figures['separate_runs_steps_per_s']):.2f}-"
        f"{max(figures['separate_runs_steps_per_s']):.2f} for one; the same final result for "
        f"every seed: {figures['same_result_every_seed']}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
