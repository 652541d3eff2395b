"""JAN (Long et al. 2017): joint MMD of (features, softmax predictions).

    python -m tljax.main --config=configs/jan.py:digits --workdir=/tmp/tljax/jan

TLlib's JAN: Gaussian banks (2^-3..2^1) on the features times a sigma=0.92
kernel on the softmax, the quadratic estimator, bottleneck Linear -> BN -> ReLU
-> Dropout(0.5).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.003, lr-gamma 0.0003, wd 5e-4, batch 32, trade-off 1, bottleneck 256, 20 epochs x 500 iterations (TLlib jan.sh)):

    python -m tljax.main --config=configs/jan.py:office31 --workdir=/tmp/tljax/jan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "jan",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "linear": False,
      "softmax_sigma": 0.92,
  })
  config.model.bottleneck_dropout = 0.5
  if arg == "office31":
    config.optimizer.learning_rate = 0.003
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0003
    config.total_steps = 10000
  return config
