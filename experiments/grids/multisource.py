"""Multi-source adaptation on the embedded digit domains: each domain in turn the unlabelled target, 3 seeds.

    nice -n 10 python -m tljax.sweep launch --grid=experiments/grids/multisource.py \
        --out=/tmp/tljax/sweeps/multisource --parallel=1
    python -m tljax.sweep collect --grid=experiments/grids/multisource.py \
        --out=/tmp/tljax/sweeps/multisource --to=experiments/results/multisource \
        --title="Digits multi-source adaptation"

Each column takes all but one of `configs/default.py`'s `DIGITS_DG_DOMAINS`
as labelled domains and the last as the unlabelled target, evaluated on all
of its images (the `digits_ms` recipe: the embedded adaptation setting, small
CNN with a 256-d bottleneck, TLlib's DANN optimizer, 1,000 steps, 32
examples per labelled domain and 32 target examples per step). The
"source combine" baselines run single-source methods on the union of the
labelled domains (`data.source_sampling='pooled'`, as many labelled examples
per step as the multi-source methods see): ERM (`source_only`), DANN and
DAN. M3SDA (moment matching, one shared classifier) and MFSAN (a branch per
labelled domain) sample each labelled domain in every step. Rows are
compared with pooled ERM, seed by seed.
"""

import sys

sys.path.insert(0, ".")  # the repository root, for configs and tljax
from configs import default  # noqa: E402
from tljax import sweep  # noqa: E402

METHODS = ("source_only", "dann", "dan", "m3sda", "mfsan")
SHORT = {"synth_digits": "Synth", "digits": "Digits", "digits_m": "Digits-M",
         "mnist5k": "MNIST", "mnist5k_m": "MNIST-M"}


def get_grid():
  domains = default.DIGITS_DG_DOMAINS
  per_domain = default.get_config("digits_ms").batch_size
  pooled = {"batch_size": per_domain * (len(domains) - 1)}
  methods = {m: f"configs/{m}.py:digits_ms" for m in METHODS}
  for m in ("source_only", "dann", "dan"):  # the configs size them for two labelled domains
    methods[m] = {"config": methods[m], "overrides": pooled}
  tasks = sweep.leave_one_domain_out(domains, target=True, name="→{held_out}")
  return {
      "methods": methods,
      "tasks": {f"→{SHORT.get(k[1:], k[1:])}": v for k, v in tasks.items()},
      "seeds": [0, 1, 2],
      "baselines": ["source_only"],
  }
