"""DD: MDD's disparity discrepancy for regression, with an adversarial regressor head.

    python -m tljax.main --config=configs/dd.py:sprites_c2n --workdir=/tmp/tljax/dd_c2n

TLlib's DD (`examples/domain_adaptation/image_regression/dd.py`, `dd.sh`):
`RegressionMarginDisparityDiscrepancy` with margin 1 and the L1 disparity,
trade-off 1, the adversarial head behind a reversal warm-started to 0.1 over
1000 steps, one pass over [source; target]; the regressor
(`ImageRegressor`) has a bottleneck of 512 with BatchNorm and two heads of
the same shape, `(512 -> BatchNorm -> ReLU) x 2 -> Linear -> Sigmoid`
(TLlib's convolutional heads on pooled features: `bn_mlp`, see
`tljax/models/heads.py`), N(0, 0.01) weights; the mean squared error, wd
5e-4, batch 128, 40 epochs on dSprites. A regression method: the task is one
of `configs/default.py`'s regression tasks (`sprites_*`, `dsprites_*`,
`mpi3d_*`).

dSprites Color -> Noisy (ResNet-18, 128 px, TLlib's hyperparameters):

    python -m tljax.main --config=configs/dd.py:dsprites_c2n --workdir=/tmp/tljax/dd_dsprites_c2n \\
        --config.model.init=/path/to/resnet18.safetensors --config.manual_dir=/path/to/dsprites

TLlib's MPI3D runs (`--normalization IN`: InstanceNorm instead of BatchNorm in
the backbone and heads) have no counterpart here: `mpi3d_*` tasks keep
BatchNorm, with TLlib's other MPI3D values (batch 36, 60 epochs, wd 1e-3).
"""

import ml_collections

from configs import default


def term() -> ml_collections.ConfigDict:
  """DD's own fields (TLlib's values). The head width and output activation are
  the regressor's; `get_config` ties them to `config.model`."""
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight on what reaches the features
      "margin": 1.0,
      "disparity": "l1",
      "head_width": 512,
      "head_init": "tllib_regressor",
      "output_activation": "sigmoid",
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 0.1,
      "grl_max_steps": 1000,
  })


def get_config(arg: str = "sprites_c2n") -> ml_collections.ConfigDict:
  if not default.is_regression(arg):
    raise ValueError(f"configs/dd.py is a regression method and {arg!r} is not a regression "
                     f"task; choose one of {', '.join(default.REGRESSION_TASKS[:4])}, ... "
                     "(configs/default.py: REGRESSION_TASKS)")
  config = default.get_config(arg)
  config.method = default.terms_method("dd", "joint", {"dd": term()})
  # dd.sh: wd 5e-4 on dSprites, 1e-3 on MPI3D.
  mpi3d = arg.startswith("mpi3d")
  default.regression_recipe(config, arg, bottleneck_dim=512, bottleneck_norm=True,
                            weight_decay=1e-3 if mpi3d else 5e-4,
                            batch_size={"dsprites": 128, "mpi3d": 36},
                            epochs={"dsprites": 40, "mpi3d": 60})
  config.model.head_type = "bn_mlp"
  config.model.init_scheme = "tllib_regressor"
  # TLlib's heads are as wide as the bottleneck, and both heads end in the
  # same activation, so they follow the regressor's unless set themselves.
  config.model.head_hidden = config.model.get_ref("bottleneck_dim").to_int()
  config.method.head_width = config.model.get_ref("bottleneck_dim").to_int()
  config.method.output_activation = config.model.get_ref("output_activation").to_str()
  return config
