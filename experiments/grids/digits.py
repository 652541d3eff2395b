"""Every method on the embedded Digits -> Digits-M task, 3 seeds.

    python -m tljax.sweep launch --grid=experiments/grids/digits.py --out=/tmp/tljax/sweeps/digits --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/digits.py --out=/tmp/tljax/sweeps/digits \
        --to=experiments/results/digits --title="Digits -> Digits-M"

Hyperparameters: each method's loss settings are TLlib's (see its config); the
optimizer, schedule, batch size and step budget are shared by all methods.

The `+warmup` rows rerun three discrepancy methods (one per estimator: MK-MMD,
JMMD, CORAL) with the transfer weight raised progressively over the whole run
(`method.trade_off_warmup=total_steps`), the rule of the JAN paper; TLlib keeps
the weight constant.
"""

METHODS = ("source_only", "ddc", "dan", "jan", "deep_coral", "cmd", "dann", "cdan", "mdd",
           "bsp", "mcc", "afn", "entropy_min")


WARMUP = ("dan", "jan", "deep_coral")


def get_grid():
  methods = {m: f"configs/{m}.py:digits" for m in METHODS}
  for m in WARMUP:
    methods[f"{m}+warmup"] = {"config": f"configs/{m}.py:digits",
                              "overrides": {"method.trade_off_warmup": 2000}}
  return {
      "methods": methods,
      "tasks": {"Digits→Digits-M": {}},
      "seeds": [0, 1, 2],
  }
