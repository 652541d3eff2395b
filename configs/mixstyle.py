"""MixStyle (Zhou et al., ICLR 2021): feature statistics mixed across domains in the backbone (TLlib's DG `mixstyle.py`).

    python -m tljax.main --config=configs/mixstyle.py:digits_dg --workdir=/tmp/tljax/mixstyle

Domain generalisation (see `configs/irm.py` for the task). TLlib's values:
MixStyle (p 0.5, alpha 0.1) after layer1-3 on PACS and DomainNet, layer1-2 on
Office-Home, each example mixed with one of another domain; 2 domains per
batch of 36 (18 from each), lr 1e-3 (DomainNet: 0.01, 2500 x 20 steps). The
small CNN mixes after its first two blocks.

PACS (ResNet-50):

    python -m tljax.main --config=configs/mixstyle.py:pacs_dg --workdir=/tmp/tljax/mixstyle_pacs_S \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/PACS
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_dg") -> ml_collections.ConfigDict:
  config = default.dg_config(arg, lr=1e-3, domainnet_lr=0.01, domainnet_epoch=2500)
  config.method = ml_collections.ConfigDict({"name": "mixstyle"})
  layers = {"digits_dg": ("block1", "block2"), "office_home_dg": ("layer1", "layer2")}.get(
      arg, ("layer1", "layer2", "layer3"))
  config.model.backbone_kwargs.update({"mixstyle_layers": layers, "mixstyle_p": 0.5,
                                       "mixstyle_alpha": 0.1, "mixstyle_mode": "crossdomain"})
  # Two domains per batch, as many examples per step as the other methods.
  sources = len(config.source.split(","))
  per_step = config.data.domains_per_step or sources
  config.batch_size = config.batch_size * per_step // 2
  config.data.domains_per_step = 2
  return config
