"""AFN (Xu et al. 2019): stepwise adaptive feature norm.

    python -m tljax.main --config=configs/afn.py:digits --workdir=/tmp/tljax/afn

TLlib's AFN: feature norms pushed up by delta=1 per step (weight 0.05), one
classifier pass per domain, bottleneck Linear -> BN -> ReLU -> Dropout(0.5),
plus target entropy (0.1) on Office-31. TLlib trains AFN with constant-lr SGD
without nesterov, every group at the base rate.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.001 constant, no nesterov, wd 5e-4, batch 32, bottleneck 1000, trade-off-norm 0.05, trade-off-entropy 0.1, 20 epochs x 500 iterations (TLlib afn.sh; TLlib's backbone group also has no momentum)):

    python -m tljax.main --config=configs/afn.py:office31 --workdir=/tmp/tljax/afn_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "afn",
      "trade_off": 0.05,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "delta": 1.0,
      "radius": ml_collections.config_dict.placeholder(float),
      "trade_off_entropy": 0.0,
      "joint_forward": False,
  })
  config.model.bottleneck_dropout = 0.5
  if arg == "office31":
    config.optimizer.learning_rate = 0.001
    config.optimizer.weight_decay = 5e-4
    config.optimizer.nesterov = False
    config.schedule.name = "constant"
    config.model.bottleneck_dim = 1000
    config.method.trade_off_entropy = 0.1
    config.param_groups = [(".*", 1.0)]
    config.total_steps = 10000
  return config
