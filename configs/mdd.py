"""MDD (Zhang et al. 2019): margin disparity discrepancy with an adversarial head.

    python -m tljax.main --config=configs/mdd.py:digits --workdir=/tmp/tljax/mdd

TLlib's MDD: margin 4, reversal warm start up to 0.1, bottleneck Linear -> BN
-> ReLU -> Dropout(0.5), main and adversarial heads Dense(1024) -> ReLU ->
Dropout(0.5) -> Dense(C).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.004, lr-gamma 0.0002, wd 5e-4, batch 32, bottleneck 1024, heads 1024, margin 4, 20 epochs x 1000 iterations (TLlib mdd.sh)):

    python -m tljax.main --config=configs/mdd.py:office31 --workdir=/tmp/tljax/mdd_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "mdd",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "margin": 4.0,
      "head_width": 1024,
      "head_dropout": 0.5,
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 0.1,
      "grl_max_steps": 1000,
  })
  config.model.bottleneck_dropout = 0.5
  config.model.head_hidden = 1024
  config.model.head_dropout = 0.5
  if arg == "office31":
    config.optimizer.learning_rate = 0.004
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0002
    config.model.bottleneck_dim = 1024
    config.total_steps = 20000
  return config
