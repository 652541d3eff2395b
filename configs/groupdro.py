"""Group DRO (Sagawa et al., ICLR 2020): risks weighted by exponentiated-gradient group weights (TLlib's DG `groupdro.py`).

    python -m tljax.main --config=configs/groupdro.py:digits_dg --workdir=/tmp/tljax/groupdro

Domain generalisation (see `configs/irm.py` for the task). TLlib's values: eta
0.01, one forward pass per domain, batches of 12 from each of 3 domains, lr
5e-4 (DomainNet: 0.005, 4000 x 20 steps).

PACS (ResNet-50):

    python -m tljax.main --config=configs/groupdro.py:pacs_dg --workdir=/tmp/tljax/groupdro_pacs_S \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/PACS
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_dg") -> ml_collections.ConfigDict:
  config = default.dg_config(arg, lr=5e-4, domainnet_lr=0.005, domainnet_epoch=4000)
  config.method = ml_collections.ConfigDict({"name": "groupdro", "eta": 0.01})
  return config
