"""MLDG (Li et al., AAAI 2018): meta-train on some domains, meta-test on the others (TLlib's DG `mldg.py`).

    python -m tljax.main --config=configs/mldg.py:digits_dg --workdir=/tmp/tljax/mldg

Domain generalisation (see `configs/irm.py` for the task). TLlib's values: 1
support and 2 query domains per step (batches of 12 from each of 3), beta
(trade-off) 1, one inner step of the run's own optimizer, lr 5e-4 (DomainNet:
0.005, 5000 x 20 steps). With two labelled domains (Digits-DG with three
domains) each step has 1 support and 1 query domain.

PACS (ResNet-50):

    python -m tljax.main --config=configs/mldg.py:pacs_dg --workdir=/tmp/tljax/mldg_pacs_S \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/PACS
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_dg") -> ml_collections.ConfigDict:
  config = default.dg_config(arg, lr=5e-4, domainnet_lr=0.005, domainnet_epoch=5000)
  config.method = ml_collections.ConfigDict({"name": "mldg", "num_support": 1,
                                             "trade_off": 1.0, "inner_steps": 1})
  return config
