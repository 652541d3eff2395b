"""Deep CORAL (Sun & Saenko 2016): second-order statistics of the bottleneck features aligned.

    python -m tljax.main --config=configs/deep_coral.py:digits --workdir=/tmp/tljax/deep_coral

TLlib's `CorrelationAlignmentLoss` (mean and covariance differences, averaged);
`form='paper'` is the paper's `||C_s - C_t||_F^2 / (4 d^2)`.

Office-31 (ResNet-50, lr 0.003, lr-gamma 0.0003, wd 5e-4, batch 32, 20 epochs x 500 iterations):

    python -m tljax.main --config=configs/deep_coral.py:office31 --workdir=/tmp/tljax/coral_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "form": "tllib",
      "layer": "features",
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("deep_coral", "joint", {"deep_coral": term(arg)})
  if arg == "office31":
    default.tllib_dan_office31(config)
  return config
