"""MCC (Jin et al. 2020): minimum class confusion on the target predictions.

    python -m tljax.main --config=configs/mcc.py:digits --workdir=/tmp/tljax/mcc

TLlib's MCC: temperature 2.5, trade-off 1, one pass over [source; target].
It composes with other terms: `configs/cdan_mcc.py`.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.005, lr-gamma 0.001, wd 1e-3, batch 36, bottleneck 1024, temperature 2.5, 20 epochs x 500 iterations (TLlib mcc.sh)):

    python -m tljax.main --config=configs/mcc.py:office31 --workdir=/tmp/tljax/mcc_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "temperature": 2.5,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("mcc", "joint", {"mcc": term(arg)})
  if arg == "office31":
    config.optimizer.learning_rate = 0.005
    config.batch_size = 36
    config.model.bottleneck_dim = 1024
    config.total_steps = 10000
  return config
