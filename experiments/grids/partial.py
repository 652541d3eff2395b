"""Partial domain adaptation: the target holds only some of the source classes.

    python -m tljax.sweep launch --grid=experiments/grids/partial.py --out=/tmp/tljax/sweeps/partial --parallel=1
    python -m tljax.sweep collect --grid=experiments/grids/partial.py --out=/tmp/tljax/sweeps/partial \
        --to=experiments/results/partial --title="SynthDigits (10 classes) -> Digits 0-4" --select=all

Embedded (default): SynthDigits, all ten digits labelled -> the real
scikit-learn digits 0-4 (`configs/default.py` task `synth_partial`, preset
`digits_partial`), 5 seeds, target accuracy. ERM (`source_only`), DANN (the
closed-set method partial DA is known to hurt), PADA, IWAN and AFN, each with
its TLlib loss settings and the shared embedded optimizer; every row is compared
with ERM and with DANN, paired by seed.

Office-31 (`:office31`, for users with the data and ImageNet weights; set the
paths below): TLlib's partial protocol (31 source classes, the 10
Office-Caltech classes in the target) on the six tasks, each method with its
TLlib .sh hyperparameters, 3 seeds, beside TLlib's published accuracies:

    python -m tljax.sweep launch --grid=experiments/grids/partial.py:office31 --out=/shared/sweeps/partial_office31 \
        --slurm=experiments/slurm/array.sbatch --submit
    python -m tljax.sweep collect --grid=experiments/grids/partial.py:office31 --out=/shared/sweeps/partial_office31 \
        --reference=experiments/reference/tllib_office31_partial.csv --title="Office-31 partial (ResNet-50)"
"""

DATA = "/shared/data/office31"
RESNET50 = "/shared/weights/resnet50_imagenet.npz"  # python -m tljax.models.convert ...
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
OFFICE31_TASKS = ("A→W", "D→W", "W→D", "A→D", "D→A", "W→A")
METHODS = ("source_only", "dann", "pada", "iwan", "afn")
# The new methods' configs name their Office-31 protocol `office31`; the
# closed-set ones take it as a task of its own.
OFFICE31_TASK = {"pada": "office31", "iwan": "office31"}


def get_grid(arg: str = "embedded"):
  if arg == "embedded":
    return {"methods": {m: f"configs/{m}.py:synth_partial" for m in METHODS},
            "tasks": {"Synth→Digits 0-4": {}},
            "seeds": [0, 1, 2, 3, 4],
            "baselines": ["source_only", "dann"]}
  if arg != "office31":
    raise ValueError(f"experiments/grids/partial.py takes 'embedded' or 'office31', not {arg!r}")
  tasks = {}
  for task in OFFICE31_TASKS:
    source, target = task.split("→")
    tasks[task] = {"source": f"office31/{DOMAINS[source]}", "target": f"office31/{DOMAINS[target]}"}
  return {"methods": {m: f"configs/{m}.py:{OFFICE31_TASK.get(m, 'office31_partial')}"
                      for m in METHODS},
          "tasks": tasks,
          "seeds": [0, 1, 2],
          "overrides": {"manual_dir": DATA, "model.init": RESNET50},
          "baselines": ["source_only", "dann"]}
