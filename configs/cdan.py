"""CDAN / CDAN+E (Long et al. 2018): conditional adversarial training.

    python -m tljax.main --config=configs/cdan.py:digits --workdir=/tmp/tljax/cdan
    python -m tljax.main --config=configs/cdan.py:digits --workdir=/tmp/tljax/cdan_e --config.method.entropy=True

TLlib's CDAN: discriminator 1024-1024 on the multilinear map of bottleneck
features and (detached) softmax, reversal as DANN's; `randomized=True` uses the
randomized map of `randomized_dim` for large feature x class products.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.01, lr-gamma 0.001, wd 1e-3, batch 32, trade-off 1, bottleneck 256, 20 epochs x 1000 iterations (TLlib cdan.sh)):

    python -m tljax.main --config=configs/cdan.py:office31 --workdir=/tmp/tljax/cdan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  """CDAN's own fields (TLlib's values)."""
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight on what reaches the features
      "entropy": False,
      "randomized": False,
      "randomized_dim": 1024,
      "hidden_sizes": (1024, 1024),
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 1.0,
      "grl_max_steps": 1000,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("cdan", "joint", {"cdan": term(arg)})
  if arg == "office31":
    config.total_steps = 20000
  return config
