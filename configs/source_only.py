"""Source only (ERM): train on labelled source data alone, evaluate on the target domain.

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/source_only

TLlib's ERM: only the source batch goes through the network (so BatchNorm sees
no target data). The baseline every domain-adaptation method is measured
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


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  if arg in default.SSL_DATASETS:
    config.method.trade_off_cls_strong = 0.1
  if arg == "office31":
    erm_office31(config)
  return config
