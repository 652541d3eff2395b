"""Universal domain adaptation: both domains hold classes the other lacks.

    python -m tljax.sweep launch --grid=experiments/grids/universal.py --out=/tmp/tljax/sweeps/universal --parallel=1
    python -m tljax.sweep collect --grid=experiments/grids/universal.py --out=/tmp/tljax/sweeps/universal \
        --to=experiments/results/universal --title="SynthDigits 0-6 -> Digits 3-9 (7-9 unknown)" --select=all

Embedded (default): SynthDigits 0-6 labelled -> real scikit-learn digits 3-9:
3-6 shared, 0-2 source-private, 7-9 target-private (one "unknown" label only
evaluation reads; `configs/default.py` task `synth_universal`, preset
`digits_universal`), 5 seeds, H-score. ERM rejects by confidence (largest
known-class probability below 0.8), UAN by its transferability below w0 = -0.5;
paired by seed with ERM.

Office-31 (`:office31`, for users with the data and ImageNet weights): UAN's
protocol (10 shared classes, 10 source-private, 11 target-private) on the six
tasks, 3 seeds. TLlib publishes no universal numbers, and UAN's paper reports
a per-class accuracy, not the H-score, so there is no reference column.

    python -m tljax.sweep launch --grid=experiments/grids/universal.py:office31 --out=/shared/sweeps/universal_office31 \
        --slurm=experiments/slurm/array.sbatch --submit
"""

DATA = "/shared/data/office31"
RESNET50 = "/shared/weights/resnet50_imagenet.npz"  # python -m tljax.models.convert ...
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
OFFICE31_TASKS = ("A→W", "D→W", "W→D", "A→D", "D→A", "W→A")
METHODS = ("source_only", "uan")
OFFICE31_TASK = {"uan": "office31"}


def get_grid(arg: str = "embedded"):
  if arg == "embedded":
    return {"methods": {m: f"configs/{m}.py:synth_universal" for m in METHODS},
            "tasks": {"Synth→Digits (7-9 unknown)": {}},
            "seeds": [0, 1, 2, 3, 4],
            "baselines": ["source_only"]}
  if arg != "office31":
    raise ValueError(f"experiments/grids/universal.py takes 'embedded' or 'office31', not {arg!r}")
  tasks = {}
  for task in OFFICE31_TASKS:
    source, target = task.split("→")
    tasks[task] = {"source": f"office31/{DOMAINS[source]}", "target": f"office31/{DOMAINS[target]}"}
  return {"methods": {m: f"configs/{m}.py:{OFFICE31_TASK.get(m, 'office31_universal')}"
                      for m in METHODS},
          "tasks": tasks,
          "seeds": [0, 1, 2],
          "overrides": {"manual_dir": DATA, "model.init": RESNET50},
          "baselines": ["source_only"]}
