"""Source only (ERM): train on labelled source data alone, evaluate on the target domain.

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/source_only

TLlib's ERM: only the source batch goes through the network (so BatchNorm sees
no target data). The baseline every domain-adaptation method is measured
against; `configs/adabn.py` and `configs/source_only_joint_bn.py` are the two
ways target data can change it without a loss.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.001, lr-gamma 0.0003, lr-decay 0.75, wd 5e-4, batch 32, no bottleneck, 5 epochs x 500 iterations (TLlib erm.sh)):

    python -m tljax.main --config=configs/source_only.py:office31 --workdir=/tmp/tljax/source_only_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31

Regression (TLlib's image-regression ERM, `erm.py` / `erm.sh`: a bottleneck of
512 with BatchNorm, a sigmoid head, the mean squared error, wd 5e-4; batch 128
and 20 epochs on dSprites, 36 and 40 on MPI3D), e.g. the embedded Color ->
Noisy sprites:

    python -m tljax.main --config=configs/source_only.py:sprites_c2n --workdir=/tmp/tljax/erm_c2n

TLlib's `erm.py` also runs the target batch through the network in training
mode, so its BatchNorm running statistics (the evaluated ones) take in
target batches; tljax's ERM never reads the target (that variant is
`configs/source_only_joint_bn.py` with `--config.method.forward=per_domain`).
"""

import ml_collections

from configs import default


def erm_office31(config: ml_collections.ConfigDict) -> None:
  """TLlib's ERM recipe on Office-31 (also AdaBN's)."""
  config.optimizer.learning_rate = 0.001
  config.optimizer.weight_decay = 5e-4
  config.schedule.gamma = 0.0003
  config.model.bottleneck_dim = 0
  config.model.dont_load = ("head/.*",)
  config.total_steps = 2500


def erm_regression(config: ml_collections.ConfigDict, arg: str) -> None:
  """TLlib's image-regression ERM recipe (also the target oracle's)."""
  default.regression_recipe(config, arg, bottleneck_dim=512, bottleneck_norm=True,
                            weight_decay=5e-4, batch_size={"dsprites": 128, "mpi3d": 36},
                            epochs={"dsprites": 20, "mpi3d": 40})


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  if arg == "office31":
    erm_office31(config)
  if default.is_regression(arg):
    erm_regression(config, arg)
  return config
