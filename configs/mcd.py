"""MCD (Saito et al. 2018): two heads maximise, the generator minimises, their discrepancy.

    python -m tljax.main --config=configs/mcd.py:digits --workdir=/tmp/tljax/mcd

TLlib's MCD: the generator is the backbone alone (no bottleneck), both heads
are `Dropout -> Linear(1024) -> BN -> ReLU -> Dropout -> Linear(1024) -> BN ->
ReLU -> Linear(C)` (`config.model.head_type='mcd'`), `num_k` = 4 generator
updates per step, MCD's entropy term at 0.01, a fixed learning rate, plain
SGD for the generator and SGD with momentum 0.9 for the heads, weight decay
5e-4 for both, every layer at the same rate.

Digits (TLlib's digits recipe: lr 0.01, trade-off 0.3, trade-off-entropy
0.03; tljax's shared batch and step budget).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.001 fixed, batch 32,
trade-off 10, trade-off-entropy 0.01, heads 1024 wide, 20 epochs x 500
iterations (TLlib mcd.sh)):

    python -m tljax.main --config=configs/mcd.py:office31 --workdir=/tmp/tljax/mcd_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  office = arg == "office31"
  config.method = ml_collections.ConfigDict({
      "name": "mcd",
      "trade_off": 10.0 if office else 0.3,
      "trade_off_entropy": 0.01 if office else 0.03,
      "num_k": 4,
  })
  config.model.bottleneck_dim = 0
  config.model.head_type = "mcd"
  config.model.head_hidden = 1024
  config.model.head_dropout = 0.5
  config.model.dont_load = ("head/.*",)
  config.optimizer.learning_rate = 0.001 if office else 0.01
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "constant"
  # The generator's optimizer has no momentum; the heads' has 0.9.
  config.param_groups = (("classifier/(backbone|bottleneck)/.*", {"momentum": 0.0}), (".*", 1.0))
  if office:
    config.total_steps = 10000
  return config
