"""`python -m tljax.analyze`: the command line of `tljax.analyze`.

    python -m tljax.analyze --workdir=DIR [--layer=features] [--shallow]
    python -m tljax.analyze --config=configs/source_only.py:digits --pixels --out=DIR --shallow

What it writes is described in `tljax/analyze/__init__.py`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from tljax import analyze
from tljax import errors
from tljax import features as features_lib
from tljax import workdir as workdir_lib
from tljax.shallow import experiment

_WORKDIR = flags.DEFINE_string("workdir", None, "A tljax run's workdir.")
_LAYER = flags.DEFINE_enum("layer", "features", ["backbone", "features", "logits"],
                           "Which output of the run's network to analyse.")
_PIXELS = flags.DEFINE_bool("pixels", False, "Analyse raw pixels of --config's task instead.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default WORKDIR/analysis).")
_SHALLOW = flags.DEFINE_bool("shallow", False, "Also run the shallow methods on the features.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds for the randomised diagnostics and methods.")
_MAX_POINTS = flags.DEFINE_integer("max_points", 2000, "Points in the t-SNE plot.")
_NORMALIZE = flags.DEFINE_enum(
    "normalize", "none", list(experiment.NORMALIZATIONS),
    "Preprocessing of the features for --shallow ('l2': unit-norm samples).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config, for --pixels.")


@errors.exits_on_bad_input
def main(argv):
  del argv
  if _PIXELS.value:
    if _CONFIG.value is None or not _OUT.value:
      raise app.UsageError("--pixels needs --config (the task) and --out")
    config, extractor, out = _CONFIG.value, None, _OUT.value
    title = f"pixels: {config.source} -> {config.target}"
  else:
    if not _WORKDIR.value:
      raise app.UsageError("pass --workdir=DIR (a tljax run), or --pixels with --config")
    config = workdir_lib.read_config(_WORKDIR.value)
    extractor = features_lib.from_workdir(_WORKDIR.value, _LAYER.value)
    out = _OUT.value or os.path.join(_WORKDIR.value, "analysis")
    title = f"{config.method.name} ({_LAYER.value}): {config.source} -> {config.target}"
  report = analyze.analyze(config, out, extractor=extractor, title=title, seeds=_SEEDS.value,
                           shallow=_SHALLOW.value, max_points=_MAX_POINTS.value,
                           normalize=_NORMALIZE.value)
  logging.info("%s", json.dumps(report))
  print(json.dumps(report, indent=2))
  print(f"wrote {out}/analysis.json, tsne.png, features.npz")


if __name__ == "__main__":
  app.run(main)
