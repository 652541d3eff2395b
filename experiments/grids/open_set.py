"""Open-set domain adaptation: the target also holds classes the source never saw.

    python -m tljax.sweep launch --grid=experiments/grids/open_set.py --out=/tmp/tljax/sweeps/open_set --parallel=1
    python -m tljax.sweep collect --grid=experiments/grids/open_set.py --out=/tmp/tljax/sweeps/open_set \
        --to=experiments/results/open_set --title="SynthDigits 0-5 -> Digits (6-9 unknown)" --select=all

Embedded (default): SynthDigits 0-5 labelled -> every real scikit-learn digit,
6-9 being one "unknown" label that only evaluation reads (`configs/default.py`
task `synth_open_set`, preset `digits_open_set`), 5 seeds, H-score (the
harmonic mean of the known classes' mean recall OS* and the unknown recall
UNK). ERM and DANN reject by confidence (largest known-class probability below
0.8: TLlib's open-set rule), OSBP by its arg-max over K + 1 outputs; each row is
compared with ERM and with DANN, paired by seed.

Office-31 (`:office31`, for users with the data and ImageNet weights; set the
paths below): TLlib's open-set protocol (the first 20 classes known, the other
11 unknown target classes) on the six tasks, TLlib's .sh hyperparameters (DANN
rejects below 0.9 there), 3 seeds, beside TLlib's published H-scores:

    python -m tljax.sweep launch --grid=experiments/grids/open_set.py:office31 --out=/shared/sweeps/open_set_office31 \
        --slurm=experiments/slurm/array.sbatch --submit
    python -m tljax.sweep collect --grid=experiments/grids/open_set.py:office31 --out=/shared/sweeps/open_set_office31 \
        --reference=experiments/reference/tllib_office31_open_set.csv --title="Office-31 open-set (ResNet-50)"
"""

DATA = "/shared/data/office31"
RESNET50 = "/shared/weights/resnet50_imagenet.npz"  # python -m tljax.models.convert ...
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
OFFICE31_TASKS = ("A→W", "D→W", "W→D", "A→D", "D→A", "W→A")
METHODS = ("source_only", "dann", "osbp")
OFFICE31_TASK = {"osbp": "office31"}


def get_grid(arg: str = "embedded"):
  if arg == "embedded":
    return {"methods": {m: f"configs/{m}.py:synth_open_set" for m in METHODS},
            "tasks": {"Synth→Digits (6-9 unknown)": {}},
            "seeds": [0, 1, 2, 3, 4],
            "baselines": ["source_only", "dann"]}
  if arg != "office31":
    raise ValueError(f"experiments/grids/open_set.py takes 'embedded' or 'office31', not {arg!r}")
  tasks = {}
  for task in OFFICE31_TASKS:
    source, target = task.split("→")
    tasks[task] = {"source": f"office31/{DOMAINS[source]}", "target": f"office31/{DOMAINS[target]}"}
  return {"methods": {m: f"configs/{m}.py:{OFFICE31_TASK.get(m, 'office31_open_set')}"
                      for m in METHODS},
          "tasks": tasks,
          "seeds": [0, 1, 2],
          "overrides": {"manual_dir": DATA, "model.init": RESNET50},
          "baselines": ["source_only", "dann"]}
