"""Synthetic -> real digits (the embedded task that can rank methods), 5 seeds.

    python -m tljax.sweep launch --grid=experiments/grids/synth.py --out=/tmp/tljax/sweeps/synth --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/synth.py --out=/tmp/tljax/sweeps/synth \
        --to=experiments/results/synth --title="SynthDigits -> Digits" --select=all

Source: 20,000 digits rendered from matplotlib's fonts; target: all 1,797
scikit-learn handwritten digits, adapted to and evaluated on transductively
(`configs/default.py`, task `synth`), so one run's standard error is about one
point. `source_only` is ERM (source batch alone through the network), `adabn`
the same training evaluated with target BatchNorm statistics,
`source_only_joint_bn` ERM with the target batch in the forward pass (BatchNorm
statistics of both domains), and `target_oracle` the same network trained on
labelled target data (held-out test split): the ceiling.

Every method keeps its TLlib loss settings (its config); optimizer, schedule,
batch size and step budget are shared; SHOT (source-free, 15 passes over the
target) and ADDA (2,000 adversarial steps) adapt each seed's `source_only`
network (their wall times exclude that source run). `--only=REGEX` launches a subset, e.g.
the baselines first: `--only='^(source_only|adabn|target_oracle)/'`.
"""

BASELINES = ("source_only", "adabn", "source_only_joint_bn", "target_oracle")
METHODS = ("dann", "cdan", "bsp", "mcc", "cdan_mcc", "mdd", "dan", "jan", "deep_coral",
           "afn", "bnm", "entropy_min", "mcd", "adda", "dsan", "pseudo_label",
           "mean_teacher", "fixmatch", "shot", "ddc", "cmd")


def get_grid():
  methods = {m: f"configs/{m}.py:synth" for m in BASELINES + METHODS}
  # SHOT is source-free: each seed adapts that seed's source_only network.
  methods["shot"] = {"config": "configs/shot.py:synth", "init_from": "source_only"}
  # ADDA adapts the same source network instead of pre-training its own: TLlib's
  # 3-in-23 pre-training share at 0.1x the learning rate is 260 steps here, too
  # few for a source classifier (46% source accuracy on the synthetic task).
  methods["adda"] = {"config": "configs/adda.py:synth", "init_from": "source_only",
                     "overrides": {"method.pretrain_steps": 0}}
  return {
      "methods": methods,
      "tasks": {"Synth→Digits": {}},
      "seeds": [0, 1, 2, 3, 4],
  }
