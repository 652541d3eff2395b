"""CMD (Zellinger et al. 2017): central moments (up to order 5) of the bottleneck features aligned.

    python -m tljax.main --config=configs/cmd.py:digits --workdir=/tmp/tljax/cmd

The paper's moment order 5 and [0, 1] bounds; the ReLU bottleneck's features
pass through a sigmoid first (`squash`) so that the bounds hold.

Office-31 (ResNet-50, lr 0.003, lr-gamma 0.0003, wd 5e-4, batch 32, 20 epochs x 500 iterations):

    python -m tljax.main --config=configs/cmd.py:office31 --workdir=/tmp/tljax/cmd_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "order": 5,
      "bounds": (0.0, 1.0),
      "layer": "features",
      "squash": "sigmoid",
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("cmd", "joint", {"cmd": term(arg)})
  if arg == "office31":
    default.tllib_dan_office31(config)
  return config
