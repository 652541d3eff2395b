"""Digits-DG: domain generalisation on the embedded digit domains, leave one domain out, 3 seeds.

    nice -n 10 python -m tljax.sweep launch --grid=experiments/grids/dg.py \
        --out=/tmp/tljax/sweeps/dg --parallel=1
    python -m tljax.sweep collect --grid=experiments/grids/dg.py --out=/tmp/tljax/sweeps/dg \
        --to=experiments/results/dg --title="Digits-DG: training-domain validation"
    python -m tljax.sweep collect --grid=experiments/grids/dg.py --out=/tmp/tljax/sweeps/dg \
        --measure=test_final --to=experiments/results/dg_oracle \
        --title="Digits-DG: final parameters (test-domain oracle)"

Each column trains on all but one of `configs/default.py`'s `DIGITS_DG_DOMAINS`
(synth_digits, digits, digits_m: no image in two of them) and tests on the
one held out, which no step reads: the final evaluation reads it once, with
the checkpoint training-domain validation picks (accuracy on 20% of each
labelled domain's training split held out, DomainBed's selection; the
`primary` table) and with the final parameters (`--measure=test_final`,
DomainBed's test-domain oracle, which selects nothing). Every method runs the
`digits_dg` recipe (small CNN from scratch, TLlib's DG classifier and
optimizer at lr 0.01, 1,000 steps, 32 examples per labelled domain per step)
with its TLlib settings; ERM and IBN pool the labelled domains (TLlib's
`erm.py`), with as many examples per step. Rows are compared with ERM, seed
by seed.

When the real-MNIST domains (`mnist5k`, `mnist5k_m`, disjoint halves of 5,000
MNIST digits) are on main, add them to `DIGITS_DG_DOMAINS` and the columns
follow: ERM's and IBN's pooled batches and MixStyle's two-domain batches are
sized from the number of labelled domains.
"""

import sys

sys.path.insert(0, ".")  # the repository root, for configs and tljax
from configs import default  # noqa: E402
from tljax import sweep  # noqa: E402

METHODS = {"erm": "source_only", "irm": "irm", "vrex": "vrex", "groupdro": "groupdro",
           "coral": "coral_dg", "mldg": "mldg", "mixstyle": "mixstyle", "ibn": "ibn"}
SHORT = {"synth_digits": "Synth", "digits": "Digits", "digits_m": "Digits-M",
         "mnist5k": "MNIST", "mnist5k_m": "MNIST-M"}


def get_grid():
  domains = default.DIGITS_DG_DOMAINS
  sources = len(domains) - 1
  per_domain = default.get_config("digits_dg").batch_size
  methods = {row: f"configs/{name}.py:digits_dg" for row, name in METHODS.items()}
  # The configs size their batches for the default two labelled domains.
  methods["erm"] = {"config": methods["erm"], "overrides": {"batch_size": per_domain * sources}}
  methods["ibn"] = {"config": methods["ibn"], "overrides": {"batch_size": per_domain * sources}}
  methods["mixstyle"] = {"config": methods["mixstyle"],
                         "overrides": {"batch_size": per_domain * sources // 2}}
  tasks = sweep.leave_one_domain_out(domains, name="→{held_out}")
  return {
      "methods": methods,
      "tasks": {f"→{SHORT.get(k[1:], k[1:])}": v for k, v in tasks.items()},
      "seeds": [0, 1, 2],
      "baselines": ["erm"],
  }
