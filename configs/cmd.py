"""CMD (Zellinger et al. 2017): central moment discrepancy up to order 5.

    python -m tljax.main --config=configs/cmd.py:digits --workdir=/tmp/tljax/cmd

Features are squashed by a sigmoid into [0, 1] before matching moments, the
bounded activations CMD's normalisation assumes. Not in TLlib; the Office-31
settings are those of TLlib's DAN example.

Office-31 (ResNet-50, TLlib's hyperparameters: as TLlib's DAN: lr 0.003, lr-gamma 0.0003, wd 5e-4, bottleneck 256, 10000 iterations):

    python -m tljax.main --config=configs/cmd.py:office31 --workdir=/tmp/tljax/cmd_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "cmd",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "order": 5,
      "bounds": (0.0, 1.0),
      "layer": "features",
      "squash": "sigmoid",
  })
  if arg == "office31":
    config.optimizer.learning_rate = 0.003
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0003
    config.total_steps = 10000
  return config
