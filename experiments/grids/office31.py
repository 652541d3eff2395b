"""TLlib's Office-31 table: every method x the six tasks x 3 seeds, ResNet-50.

    python -m tljax.sweep launch --grid=experiments/grids/office31.py --out=/shared/sweeps/office31 \
        --slurm=experiments/slurm/array.sbatch --submit
    python -m tljax.sweep collect --grid=experiments/grids/office31.py --out=/shared/sweeps/office31 \
        --reference=experiments/reference/tllib_office31.csv --title="Office-31 (ResNet-50)"

Set the data and weights below (or pass them per run through the grid's overrides).
"""

DATA = "/shared/data/office31"
RESNET50 = "/shared/weights/resnet50_imagenet.npz"  # python -m tljax.models.convert ...
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
TASKS = ("A→W", "D→W", "W→D", "A→D", "D→A", "W→A")
METHODS = ("source_only", "dann", "dan", "jan", "cdan", "mdd", "bsp", "afn", "mcc")


def get_grid():
  tasks = {}
  for task in TASKS:
    source, target = task.split("→")
    tasks[task] = {"source": f"office31/{DOMAINS[source]}", "target": f"office31/{DOMAINS[target]}"}
  return {
      "methods": {m: f"configs/{m}.py:office31" for m in METHODS},
      "tasks": tasks,
      "seeds": [0, 1, 2],
      "overrides": {"manual_dir": DATA, "model.init": RESNET50},
  }
