"""Deep CORAL (Sun & Saenko 2016): align second-order statistics of the features.

    python -m tljax.main --config=configs/deep_coral.py:digits --workdir=/tmp/tljax/deep_coral

`method.form='tllib'` (default) is TLlib's CorrelationAlignmentLoss (mean and
covariance differences, averaged); `'paper'` is ||C_s - C_t||_F^2 / (4 d^2).
TLlib has CORAL only for domain generalisation; the Office-31 settings are
those of its DAN example.

Office-31 (ResNet-50, TLlib's hyperparameters: as TLlib's DAN: lr 0.003, lr-gamma 0.0003, wd 5e-4, bottleneck 256, 10000 iterations):

    python -m tljax.main --config=configs/deep_coral.py:office31 --workdir=/tmp/tljax/deep_coral_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "deep_coral",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "form": "tllib",
      "layer": "features",
  })
  if arg == "office31":
    config.optimizer.learning_rate = 0.003
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0003
    config.total_steps = 10000
  return config
