"""Regression across domains: ERM, DANN, DD and RSD, mean absolute error of (scale, x, y).

    python -m tljax.sweep launch --grid=experiments/grids/regression.py \
        --out=/tmp/tljax/sweeps/regression --parallel=1 --seeds_together
    python -m tljax.sweep collect --grid=experiments/grids/regression.py \
        --out=/tmp/tljax/sweeps/regression --to=experiments/results/regression \
        --title="Sprites regression (small CNN, 32 px)"

Embedded (default): the dSprites-like `sprites` domains (`tljax/data/sprites.py`),
six pairs over Color, Noisy and Photo, the counterparts of TLlib's six
dSprites tasks over Color, Noisy and Scream (Photo, a sprite over one of the
project's photographs, stands where Scream, a sprite over a painting, stands
in dSprites). Every method runs `configs/default.py`'s sprites recipe (small
CNN from scratch, 32 px, batch 64 + 64, 2,000 steps, SGD at 0.1 with TLlib's
inverse decay) with its TLlib loss settings, 5 seeds, and is compared with ERM
seed by seed. Lower is better.

dSprites (`:dsprites`, for users with the published `.npz` and an ImageNet
ResNet-18; set the paths below): TLlib's six tasks, each method with its
TLlib .sh recipe, 3 seeds, beside TLlib's published errors (ERM and DD):

    python -m tljax.sweep launch --grid=experiments/grids/regression.py:dsprites \
        --out=/shared/sweeps/dsprites --slurm=experiments/slurm/array.sbatch --submit
    python -m tljax.sweep collect --grid=experiments/grids/regression.py:dsprites \
        --out=/shared/sweeps/dsprites --reference=experiments/reference/tllib_dsprites.csv \
        --title="dSprites (ResNet-18)"
"""

DATA = "/shared/data/dsprites"
RESNET18 = "/shared/weights/resnet18_imagenet.safetensors"  # python -m tljax.models.convert ...
METHODS = ("source_only", "dann", "dd", "rsd")
# Task name -> the config task: `<dataset>_<source>2<target>` (configs/default.py).
EMBEDDED = {"C→N": "sprites_c2n", "C→P": "sprites_c2p", "N→C": "sprites_n2c",
            "N→P": "sprites_n2p", "P→C": "sprites_p2c", "P→N": "sprites_p2n"}
DSPRITES = {"C→N": "dsprites_c2n", "C→S": "dsprites_c2s", "N→C": "dsprites_n2c",
            "N→S": "dsprites_n2s", "S→C": "dsprites_s2c", "S→N": "dsprites_s2n"}


def _tasks(names: dict[str, str]) -> dict[str, dict]:
  """Each column's source and target, as its config task names them (every
  method's config reads the same domains for a task)."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ".")  # the repository root, for configs
  from configs import default  # pylint: disable=g-import-not-at-top
  configs = {column: default.get_config(task) for column, task in names.items()}
  return {column: {"source": c.source, "target": c.target} for column, c in configs.items()}


def get_grid(arg: str = "embedded"):
  if arg == "embedded":
    return {"methods": {m: f"configs/{m}.py:sprites_c2n" for m in METHODS},
            "tasks": _tasks(EMBEDDED),
            "seeds": [0, 1, 2, 3, 4],
            "baselines": ["source_only"]}
  if arg != "dsprites":
    raise ValueError(f"experiments/grids/regression.py takes 'embedded' or 'dsprites', not {arg!r}")
  # Each method's dSprites recipe (batch, steps) is the same for the six tasks.
  return {"methods": {m: f"configs/{m}.py:dsprites_c2n" for m in METHODS},
          "tasks": _tasks(DSPRITES),
          "seeds": [0, 1, 2],
          "overrides": {"manual_dir": DATA, "model.init": RESNET18},
          "baselines": ["source_only"]}
