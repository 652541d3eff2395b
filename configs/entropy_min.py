"""Entropy minimisation (Grandvalet & Bengio 2004) of the target predictions.

    python -m tljax.main --config=configs/entropy_min.py:digits --workdir=/tmp/tljax/entropy_min

Trade-off 0.1 (TLlib's AFN/MCD entropy weights are 0.1 / 0.01); one pass over
[source; target].

Office-31 (ResNet-50, TLlib's DANN recipe: lr 0.01, lr-gamma 0.001, wd 1e-3, batch 32, 10,000 steps):

    python -m tljax.main --config=configs/entropy_min.py:office31 --workdir=/tmp/tljax/ent_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 0.1,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("entropy_min", "joint", {"entropy_min": term(arg)})
  if arg == "office31":
    config.total_steps = 10000
  return config
