"""MCC (Jin et al. 2020): minimum class confusion on target predictions.

    python -m tljax.main --config=configs/mcc.py:digits --workdir=/tmp/tljax/mcc

TLlib's MCC: temperature 2.5, entropy-weighted class confusion, trade-off 1.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.005, lr-gamma 0.001, wd 1e-3, batch 36, trade-off 1, bottleneck 1024, 20 epochs x 500 iterations (TLlib mcc.sh)):

    python -m tljax.main --config=configs/mcc.py:office31 --workdir=/tmp/tljax/mcc_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "mcc",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "temperature": 2.5,
  })
  if arg == "office31":
    config.optimizer.learning_rate = 0.005
    config.batch_size = 36
    config.model.bottleneck_dim = 1024
    config.total_steps = 10000
  return config
