"""BSP (Chen et al. 2019): DANN plus batch spectral penalization.

    python -m tljax.main --config=configs/bsp.py:digits --workdir=/tmp/tljax/bsp

Penalises the largest singular value of the source and target feature
matrices (weight `bsp_trade_off`, 2e-4). TLlib first pretrains 3 x 1000 source-only
iterations at lr 0.001; here that stage is a separate run (source_only) whose
checkpoint can be passed as `config.model.init`.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.003, lr-gamma 0.001, wd 1e-3, batch 32, trade-off 1, trade-off-bsp 2e-4, bottleneck 256, 20 epochs x 1000 iterations (TLlib bsp.sh)):

    python -m tljax.main --config=configs/bsp.py:office31 --workdir=/tmp/tljax/bsp_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "bsp",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "bsp_trade_off": 0.0002,
      "k": 1,
      "hidden_sizes": (1024, 1024),
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 1.0,
      "grl_max_steps": 1000,
  })
  if arg == "office31":
    config.optimizer.learning_rate = 0.003
    config.total_steps = 20000
  return config
