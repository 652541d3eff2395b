"""Every method on the embedded Digits -> Digits-M task, 5 seeds.

    python -m tljax.sweep launch --grid=experiments/grids/digits.py --out=/tmp/tljax/sweeps/digits --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/digits.py --out=/tmp/tljax/sweeps/digits \
        --to=experiments/results/digits --title="Digits -> Digits-M" --select=all

Hyperparameters: each method's loss settings are TLlib's (see its config); the
optimizer, schedule, batch size and step budget are shared by all methods.
`source_only` is ERM (the source batch alone through the network, as TLlib's
`erm.py`), `adabn` the same training evaluated with target BatchNorm
statistics, `source_only_joint_bn` ERM with the target batch in the forward
pass, and `target_oracle` the network trained on labelled target data. SHOT
(source-free) and ADDA adapt each seed's `source_only` network (their wall
times exclude that source run).

The target test split has 298 images (one run's standard error is about 2.9
points): compare methods seed by seed (the collected table's paired Δ), and
on the synthetic task too (`experiments/grids/synth.py`).
`--only=REGEX` launches a subset.

Progressive trade-off schedules (the JAN paper's rule, which TLlib does not
use): `--config.method.trade_off_warmup=2000` on a discrepancy method's run.
"""

BASELINES = ("source_only", "adabn", "source_only_joint_bn", "target_oracle")
METHODS = ("dann", "bsp", "cdan", "mcc", "cdan_mcc", "mdd", "dan", "ddc", "jan", "deep_coral",
           "cmd", "afn", "entropy_min", "bnm", "mcd", "adda", "dsan", "pseudo_label",
           "mean_teacher", "fixmatch", "shot")


def get_grid():
  methods = {m: f"configs/{m}.py:digits" for m in BASELINES + METHODS}
  # SHOT is source-free: each seed adapts that seed's source_only network.
  methods["shot"] = {"config": "configs/shot.py:digits", "init_from": "source_only"}
  # ADDA adapts the same source network instead of pre-training its own: TLlib's
  # 3-in-23 pre-training share at 0.1x the learning rate is 260 steps here, too
  # few for a source classifier (46% source accuracy on the synthetic task).
  methods["adda"] = {"config": "configs/adda.py:digits", "init_from": "source_only",
                     "overrides": {"method.pretrain_steps": 0}}
  return {
      "methods": methods,
      "tasks": {"Digits→Digits-M": {}},
      "seeds": [0, 1, 2, 3, 4],
  }
