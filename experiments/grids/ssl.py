"""Semi-supervised learning on the embedded digits (TLlib's protocol), every method against ERM.

    # The pretrained starts: ERM on another embedded domain (one network per domain).
    python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/ssl_pretrain/synth
    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/ssl_pretrain/digits
    # The grid (TLJAX_SSL_PRETRAIN: where those two runs are, /tmp/tljax/ssl_pretrain by default).
    python -m tljax.sweep launch --grid=experiments/grids/ssl.py --out=/tmp/tljax/sweeps/ssl --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/ssl.py --out=/tmp/tljax/sweeps/ssl \
        --to=experiments/results/ssl --title="Semi-supervised digits"

Columns: a dataset (`ssl_digits`: the 1,797 scikit-learn digits, 1,198 to
train on; `ssl_synth`: SynthDigits, 20,000), a label budget (4 or 25 labels
per class, TLlib's; the rest of the training split unlabelled), and a start:
from scratch, or from an ERM network trained on another embedded domain
(SynthDigits for the real digits, the `digits` half of the real ones for
SynthDigits) with TLlib's fine-tuning recipe (its backbone at 0.1x the rate,
a new bottleneck and head: `configs/default.py`'s `SSL_PRETRAINED`).
Accuracy on the dataset's test split at the last step.

Rows: `erm` (TLlib's semi-supervised ERM: the labelled part alone, with its
strong-view term) and the nine semi-supervised methods with their TLlib
settings (each config), on one optimizer (configs/default.py's `_ssl`).
Each seed draws its own labelled examples (TLlib's `x_u_split` with the
run's seed), and every row of a seed the same ones, so the paired difference
with ERM compares methods on identical labels.

The whole grid (4 columns x 2 starts x 10 rows x 5 seeds, 2,000 steps) is
about 400 runs; `--only` picks a part, e.g. the pretrained start on the real
digits: `--only='/Digits_(4|25)_pretrained/'`. `TLJAX_SSL_STEPS` and
`TLJAX_SSL_SEEDS` shorten it (the README's table says what it ran).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top

METHODS = ("pseudo_label", "pi_model", "mean_teacher", "uda", "fixmatch", "flexmatch",
           "self_tuning", "debiasmatch", "dst")
PRETRAIN = os.environ.get("TLJAX_SSL_PRETRAIN", "/tmp/tljax/ssl_pretrain")
# Each dataset's pretrained start: ERM on another embedded domain.
PRETRAINED_ON = {"ssl_digits": "synth", "ssl_synth": "digits"}
NAMES = {"ssl_digits": "Digits", "ssl_synth": "Synth"}


def tasks(datasets=("ssl_digits", "ssl_synth"), budgets=(4, 25),
          starts=("scratch", "pretrained")) -> dict[str, dict]:
  """The grid's columns: `<Dataset> <N> <start>` -> config overrides."""
  out = {}
  for dataset in datasets:
    for budget in budgets:
      for start in starts:
        fields = {"source": default.SSL_DATASETS[dataset], "target": default.SSL_DATASETS[dataset],
                  "data.labels_per_class": budget}
        if start == "pretrained":
          fields.update({"model.init": os.path.join(PRETRAIN, PRETRAINED_ON[dataset]),
                         **default.SSL_PRETRAINED})
        out[f"{NAMES[dataset]} {budget} {start}"] = fields
  return out


def get_grid():
  # Every row runs the ssl_digits task; a column's overrides set its dataset.
  methods = {"erm": "configs/source_only.py:ssl_digits"}
  methods.update({m: f"configs/{m}.py:ssl_digits" for m in METHODS})
  overrides = {}
  if os.environ.get("TLJAX_SSL_STEPS"):
    overrides["total_steps"] = int(os.environ["TLJAX_SSL_STEPS"])
  seeds = int(os.environ.get("TLJAX_SSL_SEEDS", "5"))
  return {
      "methods": methods,
      "tasks": tasks(),
      "seeds": list(range(seeds)),
      "overrides": overrides,
      "baselines": ["erm"],
  }
