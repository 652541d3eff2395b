"""Shallow domain adaptation on a features file: every method, one report.

    python -m tljax.shallow --features=features.npz --out=/tmp/shallow \
        --methods=tca,jda,bda,bda_auto,coral,sa,gfk --seeds=3

The `.npz` holds `source_features, source_labels, target_features,
target_labels`. Writes `shallow_results.{json,md,csv}` (and `tsne_*.png` with
`--tsne`) under `--out`; see `experiment.run_experiment`.
"""

import os

from absl import app
from absl import flags
from absl import logging

from tljax import errors
from tljax.shallow import experiment

_FEATURES = flags.DEFINE_string("features", None, "Input .npz file.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_METHODS = flags.DEFINE_list(
    "methods", list(experiment.DEFAULT_METHODS),
    f"Methods to run after the no-adaptation baseline; from {sorted(experiment.METHOD_SPECS)}.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds for randomised methods (subsampling, bda_auto).")
_MAX_PER_DOMAIN = flags.DEFINE_integer(
    "max_per_domain", 0, "If > 0, subsample each domain to this many samples per run.")
_DIM = flags.DEFINE_integer("dim", None, "Embedding dim for tca/jda/bda/sa/gfk (default: each method's).")
_KERNEL = flags.DEFINE_enum("kernel", None, ["primal", "linear", "rbf"],
                            "TCA/JDA/BDA kernel (default 'primal').")
_LAMB = flags.DEFINE_float("lamb", None, "TCA/JDA/BDA/CORAL regulariser (default 1).")
_GAMMA = flags.DEFINE_float("gamma", None, "RBF bandwidth (default 1).")
_ITERATIONS = flags.DEFINE_integer("T", None, "JDA/BDA pseudo-label iterations (default 10).")
_MU = flags.DEFINE_float("mu", None, "BDA balance factor for 'bda' (default 0.5).")
_DIAGNOSTICS = flags.DEFINE_bool("diagnostics", True, "Report proxy A-distance and MMD.")
_TSNE = flags.DEFINE_bool("tsne", False, "Write a t-SNE PNG per method.")
_NORMALIZE = flags.DEFINE_enum("normalize", "none", list(experiment.NORMALIZATIONS),
                               "Input preprocessing of both domains ('l2': unit-norm samples).")


@errors.exits_on_bad_input
def main(argv):
  del argv
  if not os.path.isfile(_FEATURES.value):
    raise FileNotFoundError(
        f"--features={_FEATURES.value} is not a file: pass an .npz holding source_features, "
        "source_labels, target_features and target_labels")
  overrides = {"dim": _DIM.value, "kernel": _KERNEL.value, "lamb": _LAMB.value,
               "gamma": _GAMMA.value, "T": _ITERATIONS.value, "mu": _MU.value}
  report = experiment.run_experiment(
      _FEATURES.value, _OUT.value, methods=_METHODS.value, seeds=_SEEDS.value,
      max_per_domain=_MAX_PER_DOMAIN.value, overrides=overrides,
      diagnostics=_DIAGNOSTICS.value, tsne=_TSNE.value, normalize=_NORMALIZE.value)
  for method, result in report["results"].items():
    logging.info("%-9s 1-NN %.4f  logreg %.4f  (%d run(s), %.2f s)", method,
                 result["accuracy_1nn"]["mean"], result["accuracy_logreg"]["mean"],
                 result["runs"], result["wall_time_s"]["mean"])
  with open(os.path.join(_OUT.value, "shallow_results.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)
