"""MDD (Zhang et al. 2019): margin disparity discrepancy with an adversarial head.

    python -m tljax.main --config=configs/mdd.py:digits --workdir=/tmp/tljax/mdd

TLlib's MDD: margin 4, reversal warm start up to 0.1, bottleneck Linear -> BN
-> ReLU -> Dropout(0.5), main and adversarial heads Dense(w) -> ReLU ->
Dropout(0.5) -> Dense(C) whose width w is the bottleneck width (1024 on
Office-31, 256 on digits), TLlib's initialisation of both heads and the
bottleneck (`init_scheme='tllib_mdd'`).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.004, lr-gamma 0.0002, wd 5e-4, batch 32, bottleneck 1024, heads 1024, margin 4, 20 epochs x 1000 iterations (TLlib mdd.sh)):

    python -m tljax.main --config=configs/mdd.py:office31 --workdir=/tmp/tljax/mdd_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  """MDD's own fields (TLlib's values). The head width is the task's bottleneck
  width; `get_config` ties it to `config.model.bottleneck_dim`."""
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight on what reaches the features
      "margin": 4.0,
      "head_width": 1024 if task == "office31" else 256,
      "head_dropout": 0.5,
      "head_init": "tllib_mdd",
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 0.1,
      "grl_max_steps": 1000,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("mdd", "joint", {"mdd": term(arg)})
  config.model.bottleneck_dropout = 0.5
  config.model.head_dropout = 0.5
  config.model.init_scheme = "tllib_mdd"  # N(0, 0.005)/0.1 bottleneck, N(0, 0.01)/0 heads
  if arg == "office31":
    config.optimizer.learning_rate = 0.004
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0002
    config.model.bottleneck_dim = 1024
    config.total_steps = 20000
  # TLlib's MDD: both heads' hidden width is the bottleneck width, so they follow
  # `--config.model.bottleneck_dim` unless set themselves.
  config.method.head_width = config.model.get_ref("bottleneck_dim").to_int()
  config.model.head_hidden = config.model.get_ref("bottleneck_dim").to_int()
  return config
