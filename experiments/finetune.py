"""Fine-tuning strategies and label budgets: synthetic digits -> scikit-learn digits.

    python experiments/finetune.py --out=/tmp/tljax/finetune --to=experiments/results/finetune

One command: pretrains the small digits CNN on the rendered `synth_digits`
(`configs/source_only.py:synth`, `--pretrain_steps`), then fine-tunes it on
`digits_full` with 1%, 10% and 100% of its training labels (stratified, the
subset seeded like the run) under five strategies, 3 seeds each, every run
`--steps` long, and writes `<to>.md` / `<to>.json`: test accuracy on
`digits_full:test`, mean with a 95% Student-t interval over the seeds.

Strategies (all from `configs/finetune.py:synth`, TLlib's fine-tuning recipe:
SGD, Nesterov, lr 0.01, the pretrained parts at 0.1x, the rate x0.1 at 60% of
the steps, batch 48):
  linear_probe  backbone and bottleneck frozen (`param_groups` None), the new head trains
  top_block     the first two conv blocks frozen, the last block, bottleneck and head train
  full          every parameter trains
  full+l2_sp    full, plus L2-SP (`configs/l2_sp.py`, TLlib's weights)
  full+bss      full, plus BSS (`configs/bss.py`, TLlib's weights)

Finished runs (a `results.json` in their workdir) are read, not rerun, so an
interrupted grid continues where it stopped.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tljax import sweep, train  # noqa: E402
from tljax.data import open_domain, views  # noqa: E402

_OUT = flags.DEFINE_string("out", "/tmp/tljax/finetune", "Directory of the runs.")
_TO = flags.DEFINE_string("to", "experiments/results/finetune",
                          "Prefix of the tables written (.md and .json).")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps of each fine-tuning run.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 1500, "Steps of the pretraining run.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per strategy and label budget.")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.01", "0.1", "1.0"],
                               "Fractions of the target's training labels.")

PRETRAINED = "classifier/(backbone|bottleneck)/.*"
# name: (config module, param_groups or None for the config's own)
STRATEGIES = {
    "linear_probe": ("finetune", ((PRETRAINED, None), (".*", 1.0))),
    "top_block": ("finetune", (("classifier/backbone/(conv|bn)[12]/.*", None), (PRETRAINED, 0.1),
                               (".*", 1.0))),
    "full": ("finetune", None),
    "full+l2_sp": ("l2_sp", None),
    "full+bss": ("bss", None),
}


def pretrain(out: str) -> str:
  workdir = os.path.join(out, "pretrain_synth")
  if not os.path.exists(os.path.join(workdir, "results.json")):
    config = importlib.import_module("configs.source_only").get_config("synth")
    config.total_steps = _PRETRAIN_STEPS.value
    config.eval_every = config.checkpoint_every = _PRETRAIN_STEPS.value
    train.train_and_evaluate(config, workdir)
  return workdir


def finetune_config(strategy: str, fraction: float, seed: int, pretrained: str):
  module, param_groups = STRATEGIES[strategy]
  config = importlib.import_module(f"configs.{module}").get_config("synth")
  config.model.init = pretrained
  if param_groups is not None:
    config.param_groups = param_groups
  config.seed = seed
  config.data.source_fraction = fraction
  config.data.source_subset_seed = seed
  steps = _STEPS.value
  config.total_steps = config.eval_every = config.checkpoint_every = steps
  config.schedule.boundaries = (int(0.6 * steps),)
  return config


def run_grid(out: str, pretrained: str) -> dict:
  accuracies = {}
  for fraction in (float(f) for f in _FRACTIONS.value):
    for strategy in STRATEGIES:
      for seed in range(_SEEDS.value):
        workdir = os.path.join(out, f"{strategy}_{fraction:g}", f"seed{seed}")
        path = os.path.join(workdir, "results.json")
        if not os.path.exists(path):
          started = time.time()
          train.train_and_evaluate(finetune_config(strategy, fraction, seed, pretrained), workdir)
          logging.info("%s %g seed %d: %.0f s", strategy, fraction, seed, time.time() - started)
        with open(path) as f:
          accuracies.setdefault(f"{fraction:g}", {}).setdefault(strategy, []).append(
              json.load(f)["target_accuracy"])
  return accuracies


def labelled_examples(fraction: float) -> int:
  """Training examples kept at `fraction` (the same count for every seed)."""
  config = finetune_config("full", fraction, 0, "")
  domain = open_domain(config.source, config.source_split, data_dir=config.data_dir)
  return len(views.stratified_indices(views.domain_labels(domain), fraction, seed=0))


def render(accuracies: dict, pretrained: str) -> tuple[str, dict]:
  with open(os.path.join(pretrained, "results.json")) as f:
    pretrain = json.load(f)
  fractions = list(accuracies)
  lines = [
      "## Fine-tuning on digits_full from a synth_digits network", "",
      "`python experiments/finetune.py` (this file is its output). The small digits CNN "
      f"pretrained for {_PRETRAIN_STEPS.value} steps on `synth_digits` "
      f"(its `synth_digits:test` accuracy {100 * pretrain['source_accuracy']:.1f}%, "
      f"on `digits_full:test` without fine-tuning {100 * pretrain['target_accuracy']:.1f}%), "
      f"then fine-tuned for {_STEPS.value} steps on a stratified fraction of "
      "`digits_full:train`'s labels. Test accuracy (%) on `digits_full:test`, mean over "
      f"{_SEEDS.value} seeds [95% t-interval]; the seed sets the initialisation of the new head, "
      "the data order and which labelled examples are kept. CPU, one run at a time.", "",
      "Intervals are not clipped to [0, 100]; with 3 seeds the t quantile is 4.3.", "",
      "| strategy | " + " | ".join(f"{float(f):.0%} labels ({labelled_examples(float(f))})"
                                   for f in fractions) + " |",
      "|---|" + "---|" * len(fractions),
  ]
  summary = {}
  for strategy in STRATEGIES:
    cells = []
    for fraction in fractions:
      values = accuracies[fraction][strategy]
      low, high = sweep.confidence_interval(values)
      mean = statistics.fmean(values)
      summary.setdefault(strategy, {})[fraction] = {"mean": mean, "ci_low": low, "ci_high": high,
                                                    "values": values}
      cells.append(f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]")
    lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
  lines += ["", "Against `full` at the same budget (95% intervals that do not overlap):", ""]
  for fraction in fractions:
    verdicts = []
    for strategy in STRATEGIES:
      if strategy != "full":
        row, baseline = summary[strategy][fraction], summary["full"][fraction]
        verdicts.append(f"{strategy} {sweep.compare(row, baseline)}")
    lines.append(f"* {float(fraction):.0%} labels: " + "; ".join(verdicts) + ".")
  return "\n".join(lines) + "\n", summary


def main(argv):
  del argv
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  pretrained = pretrain(out)
  accuracies = run_grid(out, pretrained)
  markdown, summary = render(accuracies, pretrained)
  os.makedirs(os.path.dirname(_TO.value) or ".", exist_ok=True)
  with open(_TO.value + ".md", "w") as f:
    f.write(markdown)
  with open(_TO.value + ".json", "w") as f:
    json.dump({"steps": _STEPS.value, "pretrain_steps": _PRETRAIN_STEPS.value,
               "seeds": _SEEDS.value, "results": summary}, f, indent=2)
  print(markdown)


if __name__ == "__main__":
  app.run(main)
