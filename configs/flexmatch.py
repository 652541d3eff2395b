"""FlexMatch (Zhang et al. 2021): FixMatch with per-class curriculum thresholds.

    python -m tljax.main --config=configs/flexmatch.py:ssl_digits --workdir=/tmp/tljax/flexmatch

TLlib's semi-supervised `flexmatch.py`: threshold 0.95 (its CIFAR-10 run with
4 labels per class and most others), the convex mapping `x / (2 - x)`, no
threshold warm-up, self-training trade-off 1, labelled strong-view
cross-entropy at 0.1; its CIFAR-10 learning rate: 0.003 (the shared 0.01 on
the embedded tasks, configs/default.py). The per-class record of confident
predictions is in the train state (checkpointed).
"""

import ml_collections

from configs import default


def get_config(arg: str = "ssl_digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "flexmatch",
      "threshold": 0.95,
      "trade_off": 1.0,
      "trade_off_cls_strong": 0.1,
      "warmup": False,
  })
  return config
