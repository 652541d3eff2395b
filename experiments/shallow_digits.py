"""Shallow methods on Digits -> Digits-M: raw pixels, and features of source-trained networks.

    python experiments/shallow_digits.py --sweep=/tmp/tljax/sweeps/digits --out=experiments/results

Needs the digits sweep (experiments/grids/digits.py) for the source-only
networks (3 seeds). Writes `shallow_digits.md` / `.json`: target 1-NN accuracy
of no adaptation and of each shallow method, on pixels (deterministic methods,
one run) and on the pooled backbone features of each source-only seed (mean ±
std over the 3 networks), plus the t-SNE of source-only vs DANN features.
"""

import json
import os
import shutil
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import source_only  # noqa: E402
from tljax import analyze, features, workdir  # noqa: E402
from tljax.shallow import experiment  # noqa: E402

_SWEEP = flags.DEFINE_string("sweep", "/tmp/tljax/sweeps/digits", "Digits sweep directory.")
_OUT = flags.DEFINE_string("out", "experiments/results", "Where the tables and plots go.")
_SCRATCH = flags.DEFINE_string("scratch", "/tmp/tljax/shallow_digits", "Working directory.")
_LAYER = flags.DEFINE_string("layer", "backbone", "Network layer whose features are adapted.")
_NORMALIZE = flags.DEFINE_enum("normalize", "l2", list(experiment.NORMALIZATIONS),
                               "Preprocessing of both domains before every method, 'none' included.")

METHODS = ("none", "tca", "jda", "bda", "bda_auto", "coral", "sa", "gfk")


def _accuracies(out_dir):
  with open(os.path.join(out_dir, "shallow_results.json")) as f:
    results = json.load(f)["results"]
  return {m: results[m]["accuracy_1nn"]["mean"] for m in METHODS if m in results}


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  table = {}
  pixels_dir = os.path.join(_SCRATCH.value, "pixels")
  analyze.analyze(source_only.get_config("digits"), pixels_dir, seeds=3, shallow=True,
                  normalize=_NORMALIZE.value)
  table["pixels"] = _accuracies(pixels_dir)
  per_seed = []
  for seed in range(3):
    run = os.path.join(_SWEEP.value, "source_only", "Digits2Digits-M", f"seed{seed}")
    out = os.path.join(_SCRATCH.value, f"source_only_seed{seed}")
    analyze.analyze(workdir.read_config(run), out, extractor=features.from_workdir(run, _LAYER.value),
                    seeds=3, shallow=True, normalize=_NORMALIZE.value)
    per_seed.append(_accuracies(out))
  table["features"] = {m: [s[m] for s in per_seed] for m in METHODS}
  lines = ["## Shallow methods on Digits -> Digits-M", "",
           "Target 1-NN accuracy (%) on `digits_m:test` after fitting on `digits:test` (labelled) "
           f"and `digits_m:test` (unlabelled). Features: the `{_LAYER.value}` output of the three "
           "source-only networks of the digits sweep (mean ± std over the 3 seeds); pixels: the "
           "2,352 normalised pixels (one run; `bda_auto` averages 3 seeds of its A-distances). "
           f"Every method, `none` included, sees the samples after `--normalize={_NORMALIZE.value}`"
           " (unit-norm samples, what the TCA/JDA/BDA reference code does inside).", "",
           "| method | pixels | source-only features |", "|---|---|---|"]
  for m in METHODS:
    values = [100 * v for v in table["features"][m]]
    lines.append(f"| {m} | {100 * table['pixels'][m]:.1f} | "
                 f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f} |")
  with open(os.path.join(_OUT.value, "shallow_digits.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(_OUT.value, "shallow_digits.json"), "w") as f:
    json.dump(table, f, indent=2)
  # Alignment of a source-only network vs DA networks (seed 0): A-distance, MMD, 1-NN, t-SNE.
  analysis = ["", "## Alignment of the bottleneck features (seed 0)", "",
              "| network | target acc. | proxy A-distance | MMD² | target 1-NN acc. |",
              "|---|---|---|---|---|"]
  for method in ("source_only", "dan", "dann", "bsp"):
    run = os.path.join(_SWEEP.value, method, "Digits2Digits-M", "seed0")
    out = os.path.join(_SCRATCH.value, f"{method}_tsne")
    report = analyze.analyze(workdir.read_config(run), out,
                             extractor=features.from_workdir(run, "features"),
                             title=f"{method}: bottleneck features, digits -> digits_m", seeds=3)
    shutil.copy(os.path.join(out, "tsne.png"), os.path.join(_OUT.value, f"tsne_digits_{method}.png"))
    with open(os.path.join(_OUT.value, f"analysis_digits_{method}.json"), "w") as f:
      json.dump(report, f, indent=2)
    with open(os.path.join(run, "results.json")) as f:
      accuracy = json.load(f)["target_accuracy"]
    analysis.append(f"| {method} | {100 * accuracy:.1f} | {report['proxy_a_distance']:.2f} | "
                    f"{report['mmd2']:.3f} | {100 * report['target_1nn_accuracy']:.1f} |")
  with open(os.path.join(_OUT.value, "shallow_digits.md"), "a") as f:
    f.write("\n".join(analysis) + "\n")
  print("\n".join(lines + analysis))


if __name__ == "__main__":
  app.run(main)
