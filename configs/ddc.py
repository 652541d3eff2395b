"""DDC (Tzeng et al. 2014): MMD with one Gaussian kernel on the bottleneck features.

    python -m tljax.main --config=configs/ddc.py:digits --workdir=/tmp/tljax/ddc

Not in TLlib; its MMD estimator (`tljax.losses.mmd`) with one kernel whose
bandwidth is the batch's mean squared distance (`alpha` 1) or a fixed `sigma`.

Office-31 (ResNet-50, TLlib's DAN hyperparameters: lr 0.003, lr-gamma 0.0003, wd 5e-4, batch 32, 20 epochs x 500 iterations):

    python -m tljax.main --config=configs/ddc.py:office31 --workdir=/tmp/tljax/ddc_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "alpha": 1.0,
      "sigma": ml_collections.config_dict.placeholder(float),
      "linear": False,
      "layer": "features",
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("ddc", "joint", {"ddc": term(arg)})
  if arg == "office31":
    default.tllib_dan_office31(config)
  return config
