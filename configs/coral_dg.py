"""CORAL for domain generalisation: pairwise correlation alignment of the labelled domains (TLlib's DG `coral.py`).

    python -m tljax.main --config=configs/coral_dg.py:digits_dg --workdir=/tmp/tljax/coral_dg

Domain generalisation (see `configs/irm.py` for the task). TLlib's values:
trade-off 1, batches of 12 from each of 3 domains, lr 5e-4 (DomainNet: 0.01,
2500 x 20 steps). `configs/deep_coral.py` is the adaptation method.

PACS (ResNet-50):

    python -m tljax.main --config=configs/coral_dg.py:pacs_dg --workdir=/tmp/tljax/coral_pacs_S \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/PACS
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_dg") -> ml_collections.ConfigDict:
  config = default.dg_config(arg, lr=5e-4, domainnet_lr=0.01, domainnet_epoch=2500)
  config.method = ml_collections.ConfigDict({"name": "coral_dg", "trade_off": 1.0})
  return config
