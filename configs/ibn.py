"""IBN-Net (Pan et al., ECCV 2018): instance + batch normalisation in the first stages, trained by ERM (TLlib's DG `ibn.sh`).

    python -m tljax.main --config=configs/ibn.py:digits_dg --workdir=/tmp/tljax/ibn

Domain generalisation (see `configs/irm.py` for the task). TLlib runs ERM
(`erm.py`: the labelled domains pooled, batches of 36, lr 1e-3; DomainNet:
0.01, 2500 x 20 steps) on `resnet50_ibn_b`; the small CNN normalises its first
two blocks with IBN-a's instance-batch norm (`backbone_kwargs.ibn_blocks=2`).
The ResNet loads IBN-Net's checkpoint (`resnet50_ibn_b-9ca61e85.pth`) or a
torchvision ResNet-50's, whose BatchNorm weights fill the BatchNorm parts
(the InstanceNorm parts keep their init).

PACS (ResNet-50 IBN-b):

    python -m tljax.main --config=configs/ibn.py:pacs_dg --workdir=/tmp/tljax/ibn_pacs_S \\
        --config.model.init=/path/to/resnet50_ibn_b.pth --config.manual_dir=/path/to/PACS
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_dg") -> ml_collections.ConfigDict:
  config = default.dg_config(arg, lr=1e-3, domainnet_lr=0.01, domainnet_epoch=2500)
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  if arg == "digits_dg":
    config.model.backbone_kwargs.ibn_blocks = 2
  else:
    config.model.name = "resnet50_ibn_b"
  default.pooled(config)
  return config
