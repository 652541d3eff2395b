"""RSD (Chen et al. 2021): representation subspace distance with the base mismatch penalty.

    python -m tljax.main --config=configs/rsd.py:sprites_c2n --workdir=/tmp/tljax/rsd_c2n

TLlib's RSD (`examples/domain_adaptation/image_regression/rsd.py`, `rsd.sh`):
trade-off 0.001, base-mismatch trade-off 0.1, on the features of a
bottleneck Linear(256) -> ReLU without BatchNorm, one pass per domain, a
sigmoid head, the mean squared error, wd 1e-3, batch 36, 40 epochs. A
regression method: the task is one of `configs/default.py`'s regression tasks
(`sprites_*`, `dsprites_*`, `mpi3d_*`).

dSprites Color -> Noisy (ResNet-18, 128 px, TLlib's hyperparameters):

    python -m tljax.main --config=configs/rsd.py:dsprites_c2n --workdir=/tmp/tljax/rsd_dsprites_c2n \\
        --config.model.init=/path/to/resnet18.safetensors --config.manual_dir=/path/to/dsprites
"""

import ml_collections

from configs import default


def term() -> ml_collections.ConfigDict:
  """RSD's own fields (TLlib's values)."""
  return ml_collections.ConfigDict({
      "trade_off": 0.001,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight on what reaches the features
      "bmp_trade_off": 0.1,
  })


def get_config(arg: str = "sprites_c2n") -> ml_collections.ConfigDict:
  if not default.is_regression(arg):
    raise ValueError(f"configs/rsd.py is a regression method and {arg!r} is not a regression "
                     f"task; choose one of {', '.join(default.REGRESSION_TASKS[:4])}, ... "
                     "(configs/default.py: REGRESSION_TASKS)")
  config = default.get_config(arg)
  config.method = default.terms_method("rsd", "per_domain", {"rsd": term()})
  default.regression_recipe(config, arg, bottleneck_dim=256, bottleneck_norm=False,
                            weight_decay=1e-3, batch_size={"dsprites": 36, "mpi3d": 36},
                            epochs={"dsprites": 40, "mpi3d": 40})
  return config
