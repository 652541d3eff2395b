"""Choosing a trade-off without target labels: methods x trade-offs on the synthetic task.

    python -m tljax.sweep launch --grid=experiments/grids/selection.py --out=/tmp/tljax/sweeps/selection --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/selection.py --out=/tmp/tljax/sweeps/selection \
        --to=/tmp/tljax/sweeps/selection/results --select=all
    python experiments/selection_study.py --sweep="Synth→Digits (trade-offs)=/tmp/tljax/sweeps/selection" \
        --sweep="Synth→Digits=/tmp/tljax/sweeps/synth" --to=experiments/results/selection.md

Rows are `method@trade_off`, so `collect --select` reports, per method, the
trade-off each validator picks next to the oracle's pick (`within` a method
family) as well as the pick over all rows. Baselines (`source_only`, `adabn`)
are candidates too: a validator may prefer not adapting.
"""

TRADE_OFFS = (0.1, 0.3, 1.0, 3.0)
METHODS = ("dann", "cdan", "mcc", "dan")


def get_grid():
  methods = {m: f"configs/{m}.py:synth" for m in ("source_only", "adabn")}
  for method in METHODS:
    for trade_off in TRADE_OFFS:
      methods[f"{method}@{trade_off:g}"] = {"config": f"configs/{method}.py:synth",
                                           "overrides": {"method.trade_off": trade_off}}
  return {"methods": methods, "tasks": {"Synth→Digits": {}}, "seeds": [0, 1]}
