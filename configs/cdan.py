"""CDAN (Long et al. 2018): adversarial alignment conditioned on predictions.

    python -m tljax.main --config=configs/cdan.py:digits --workdir=/tmp/tljax/cdan

The discriminator sees the multilinear map of features and detached softmax.
`method.entropy=True` is CDAN+E; `method.randomized=True` uses the randomized
map (dimension `randomized_dim`, 1024) for large products. TLlib randomises only
when asked (its DomainNet runs).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.01, lr-gamma 0.001, wd 1e-3, batch 32, trade-off 1, bottleneck 256, no randomization, 20 epochs x 1000 iterations (TLlib cdan.sh)):

    python -m tljax.main --config=configs/cdan.py:office31 --workdir=/tmp/tljax/cdan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "cdan",
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "entropy": False,
      "randomized": False,
      "randomized_dim": 1024,
      "hidden_sizes": (1024, 1024),
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 1.0,
      "grl_max_steps": 1000,
  })
  if arg == "office31":
    config.total_steps = 20000
  return config
