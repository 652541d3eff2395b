"""Model selection without target labels: what each validator would have picked.

    python experiments/selection_study.py --sweep="Synth→Digits=/tmp/tljax/sweeps/synth" \
        --sweep="Digits→Digits-M=/tmp/tljax/sweeps/digits" --to=experiments/results/selection.md

Reads the `results.json` of finished sweep runs (`OUT/<method>/<task>/seed<k>`;
see experiments/grids/) and writes, per task:

1. Per method (mean over seeds, target accuracy %): the final step, the
   oracle-best evaluation (TLlib's protocol: the best step chosen on target
   test labels), and the step each validator picks. `gap` is oracle-best minus
   final: how much the oracle flatters a method.
2. Rank correlation (Spearman, oriented so +1 = ranks as target accuracy does)
   between each validator and target accuracy, across the checkpoints of one
   run (mean over runs), and across configurations (methods) of a task, from
   each configuration's final validator value vs its target accuracy (the
   target oracle, trained on target labels, is left out of this and of 3).
3. Across configurations: the configuration each validator picks per task,
   its accuracy, the oracle's pick and the mean of all configurations
   (`tljax.sweep.select_configs`).

Every validator is computed at every evaluation of every run; nothing here
touches target labels except the oracle columns.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tljax import sweep, validators  # pylint: disable=g-import-not-at-top

_SWEEPS = flags.DEFINE_multi_string("sweep", [], "TASK=DIR: a sweep output directory.")
_TO = flags.DEFINE_string("to", "experiments/results/selection.md", "Markdown file to write.")


# Rows that are not a configuration a user could pick without target labels.
NOT_ADAPTATION = sweep.NOT_CANDIDATES


def _runs(directory: str) -> dict[str, list[dict]]:
  by_method = collections.defaultdict(list)
  for root, _, files in os.walk(directory):
    if "results.json" in files and len(os.path.relpath(root, directory).split(os.sep)) == 3:
      with open(os.path.join(root, "results.json")) as f:
        by_method[os.path.relpath(root, directory).split(os.sep)[0]].append(json.load(f))
  return by_method


def _spearman(x: list[float], y: list[float]) -> float | None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
    return None
  rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)
  return float(np.corrcoef(rank(np.asarray(x)), rank(np.asarray(y)))[0, 1])


def _fmt(value: float | None, digits: int = 1) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def method_table(by_method: dict[str, list[dict]], names: list[str]) -> list[str]:
  header = ["method", "seeds", "final", "oracle-best", "gap"] + names
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method in sorted(by_method, key=lambda m: (m not in sweep.BASELINES, m)):
    runs = by_method[method]
    final = statistics.fmean(100 * r["target_accuracy"] for r in runs)
    oracle = statistics.fmean(100 * r["oracle_best"]["target_accuracy"] for r in runs)
    picks = []
    for name in names:
      values = [100 * r["selected"][name]["target_accuracy"] for r in runs
                if name in (r.get("selected") or {})]
      picks.append(_fmt(statistics.fmean(values)) if len(values) == len(runs) else "–")
    lines.append("| " + " | ".join([method, str(len(runs)), _fmt(final), _fmt(oracle),
                                    _fmt(oracle - final)] + picks) + " |")
  return lines


def correlation_table(by_method: dict[str, list[dict]], names: list[str]) -> list[str]:
  lines = ["| validator | across checkpoints (mean over runs) | runs | across configurations |",
           "|---|---|---|---|"]
  for name in names:
    within = [r["validator_rank_correlation"].get(name) for runs in by_method.values()
              for r in runs if (r.get("validator_rank_correlation") or {}).get(name) is not None]
    higher = validators.VALIDATORS[name].higher_is_better
    scores, accuracies = [], []
    for method, runs in by_method.items():
      if method in NOT_ADAPTATION:
        continue
      # The final source accuracy is a top-level field (the validator's split
      # is the source evaluation split unless config.source_val_split differs).
      values = [r["source_accuracy"] if name == "source_accuracy"
                else (r.get("validators_final") or {}).get(name) for r in runs]
      if values and all(v is not None and v == v for v in values):
        score = statistics.fmean(values)
        scores.append(score if higher else -score)
        accuracies.append(statistics.fmean(r["target_accuracy"] for r in runs))
    lines.append(f"| {name} | {_fmt(statistics.fmean(within) if within else None, 2)} | "
                 f"{len(within)} | {_fmt(_spearman(scores, accuracies), 2)} |")
  return lines


def main(argv):
  del argv
  out = ["## Model selection without target labels", "",
         "Generated by `experiments/selection_study.py` from the sweeps named below. "
         "Target accuracy (%), mean over seeds. `final`: the last step; `oracle-best`: the best "
         "evaluation chosen on target labels (TLlib's protocol, an oracle); `gap`: how much that "
         "flatters the method; one column per validator: the accuracy at the step it picks. "
         "Correlations are Spearman's, oriented so that +1 ranks as target accuracy does.", ""]
  for spec in _SWEEPS.value:
    task, _, directory = spec.partition("=")
    by_method = _runs(directory)
    if not by_method:
      continue
    names = sorted(n for n in validators.VALIDATORS if n != "oracle"
                   and any(n in (r.get("selected") or {}) for runs in by_method.values()
                           for r in runs))
    out += [f"### {task}", "", f"Runs: `{directory}`.", "", "**Checkpoint selection within each run**", ""]
    out += method_table(by_method, names) + [""]
    out += ["**Rank correlation with target accuracy**", ""]
    out += correlation_table(by_method, names) + [""]
    table = sweep.collect(directory)
    table["rows"] = [r for r in table["rows"] if r["method"] not in NOT_ADAPTATION]
    selections = [s for name in names for s in sweep.select_configs(table, name)]
    oracle = sweep.select_configs(table, "oracle") if "oracle" in validators.VALIDATORS else []
    out += ["**Choosing the method (configuration) per task**", "",
            sweep.render_selection(selections + oracle)]
  os.makedirs(os.path.dirname(os.path.abspath(_TO.value)), exist_ok=True)
  with open(_TO.value, "w") as f:
    f.write("\n".join(out) + "\n")
  print(f"wrote {_TO.value}")


if __name__ == "__main__":
  app.run(main)
