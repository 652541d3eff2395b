"""DAN (Long et al. 2015): multi-kernel MMD between source and target features.

    python -m tljax.main --config=configs/dan.py:digits --workdir=/tmp/tljax/dan

TLlib's defaults: five Gaussian kernels (bandwidth 2^-3..2^1 x mean distance),
the linear-time estimator, one classifier pass per domain, and a bottleneck
Linear(256) -> ReLU -> Dropout(0.5) without BatchNorm. `method.layers=('features',
'logits')` aligns both layers as in the paper; `method.kernel_weights='optimized'`
solves the paper's kernel weights per batch.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.003, lr-gamma 0.0003, lr-decay 0.75, wd 5e-4, batch 32, trade-off 1, bottleneck 256, linear MK-MMD, 20 epochs x 500 iterations (TLlib dan.sh)):

    python -m tljax.main --config=configs/dan.py:office31 --workdir=/tmp/tljax/dan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "dan",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "linear": True,
      "joint_forward": False,
      "layers": ("features",),
      "kernel_weights": "equal",
  })
  config.model.bottleneck_norm = False
  config.model.bottleneck_dropout = 0.5
  if arg == "office31":
    config.optimizer.learning_rate = 0.003
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.0003
    config.total_steps = 10000
  return config
