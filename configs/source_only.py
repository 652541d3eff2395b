"""Source only (ERM): train on labelled source data alone, evaluate on the target domain.

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/source_only

TLlib's ERM: only the source batch goes through the network (so BatchNorm sees
no target data). With several labelled domains (`:digits_dg`, `:pacs_dg`, ...,
`:digits_ms`, ...) it is ERM on their union, pooled into one stream (TLlib's
DG `erm.py`; the "source combine" baseline of multi-source adaptation):

    python -m tljax.main --config=configs/source_only.py:digits_dg --workdir=/tmp/tljax/erm_dg The baseline every domain-adaptation method is measured
against; `configs/adabn.py` and `configs/source_only_joint_bn.py` are the two
ways target data can change it without a loss.

Semi-supervised tasks (`ssl_digits`, `ssl_synth`: N labels per class, see
configs/default.py): TLlib's semi-supervised ERM (`erm.py`), the labelled
batch alone plus 0.1 x the cross-entropy of its strong view
(`trade_off_cls_strong`); the baseline the semi-supervised methods are
compared with (TLlib's lr on CIFAR-10 with 4 labels per class: 0.03):

    python -m tljax.main --config=configs/source_only.py:ssl_digits --workdir=/tmp/tljax/erm_ssl

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.001, lr-gamma 0.0003, lr-decay 0.75, wd 5e-4, batch 32, no bottleneck, 5 epochs x 500 iterations (TLlib erm.sh)):

    python -m tljax.main --config=configs/source_only.py:office31 --workdir=/tmp/tljax/source_only_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31

Label sets that differ: `synth_partial` / `synth_open_set` / `synth_universal`
on the embedded digits; `office31_partial` (TLlib's partial erm.sh: batch 36,
5 epochs x 500 iterations) and `office31_open_set` (TLlib's open-set erm.sh:
batch 32, 20 epochs x 500 iterations). In open-set and universal tasks ERM
rejects by confidence: a target example whose largest known-class probability
is below `config.unknown_threshold` (0.8) is unknown (TLlib's open-set erm.py).

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
  if arg in default.DG_TASKS:
    # TLlib's DG ERM (`erm.py`): the labelled domains pooled, lr 1e-3
    # (DomainNet: 0.01, 2500 x 20 steps).
    config = default.dg_config(arg, lr=1e-3, domainnet_lr=0.01, domainnet_epoch=2500)
  else:
    config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  if arg in default.SSL_DATASETS:
    config.method.trade_off_cls_strong = 0.1
  if arg.startswith("office31"):
    erm_office31(config)
  if arg == "office31_partial":
    config.batch_size = 36
  if arg == "office31_open_set":
    config.total_steps = 10000
  if arg in default.DG_TASKS + default.MULTI_SOURCE_TASKS:
    default.pooled(config)
  if default.is_regression(arg):
    erm_regression(config, arg)
  return config
