"""DDC (Tzeng et al. 2014): MMD with a single Gaussian kernel on the bottleneck features.

    python -m tljax.main --config=configs/ddc.py:digits --workdir=/tmp/tljax/ddc

TLlib has no DDC example; the Office-31 settings are those of its DAN example.

Office-31 (ResNet-50, TLlib's hyperparameters: as TLlib's DAN: lr 0.003, lr-gamma 0.0003, wd 5e-4, bottleneck 256, 20 epochs x 500 iterations):

    python -m tljax.main --config=configs/ddc.py:office31 --workdir=/tmp/tljax/ddc_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "ddc",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "alpha": 1.0,
      "sigma": ml_collections.config_dict.placeholder(float),
      "linear": False,
      "layer": "features",
  })
  if arg == "office31":
    config.optimizer.learning_rate = 0.003
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0003
    config.total_steps = 10000
  return config
