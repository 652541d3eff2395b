"""Every method on the embedded Digits -> Digits-M task, 3 seeds.

    python -m tljax.sweep launch --grid=experiments/grids/digits.py --out=/tmp/tljax/sweeps/digits --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/digits.py --out=/tmp/tljax/sweeps/digits \
        --to=experiments/results/digits --title="Digits -> Digits-M"

Hyperparameters: each method's loss settings are TLlib's (see its config); the
optimizer, schedule, batch size and step budget are shared by all methods.
"""

METHODS = ("source_only", "ddc", "dan", "jan", "deep_coral", "cmd", "dann", "cdan", "mdd",
           "bsp", "mcc", "afn", "entropy_min")


def get_grid():
  return {
      "methods": {m: f"configs/{m}.py:digits" for m in METHODS},
      "tasks": {"Digits→Digits-M": {}},
      "seeds": [0, 1, 2],
  }
