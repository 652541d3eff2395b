"""JAN (Long et al. 2017): joint MMD of the bottleneck features and the softmax.

    python -m tljax.main --config=configs/jan.py:digits --workdir=/tmp/tljax/jan

TLlib's JAN: kernels 2^-3..2^1 on the features, one Gaussian with sigma 0.92
on the softmax, the quadratic estimator, one pass over [source; target],
bottleneck Linear -> BN -> ReLU -> Dropout(0.5).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.003, lr-gamma 0.0003, wd 5e-4, batch 32, trade-off 1, 20 epochs x 500 iterations (TLlib jan.sh)):

    python -m tljax.main --config=configs/jan.py:office31 --workdir=/tmp/tljax/jan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "alphas": (0.125, 0.25, 0.5, 1.0, 2.0),
      "softmax_sigma": 0.92,
      "linear": False,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("jan", "joint", {"jan": term(arg)})
  config.model.bottleneck_dropout = 0.5
  if arg == "office31":
    default.tllib_dan_office31(config)
  return config
