"""Entropy minimisation (Grandvalet & Bengio 2005) on target predictions.

    python -m tljax.main --config=configs/entropy_min.py:digits --workdir=/tmp/tljax/entropy_min

A common regulariser and the simplest use of unlabelled target data. Not a
TLlib example; the Office-31 settings are those of its DANN example.

Office-31 (ResNet-50, TLlib's hyperparameters: as TLlib's DANN: lr 0.01, lr-gamma 0.001, wd 1e-3, bottleneck 256, 10000 iterations):

    python -m tljax.main --config=configs/entropy_min.py:office31 --workdir=/tmp/tljax/entropy_min_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "entropy_min",
      "trade_off": 0.1,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
  })
  if arg == "office31":
    config.total_steps = 10000
  return config
