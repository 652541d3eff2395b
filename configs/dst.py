"""DST (Chen et al. 2022): self-training through a pseudo head, with a worst-case head.

    python -m tljax.main --config=configs/dst.py:ssl_digits --workdir=/tmp/tljax/dst

TLlib's semi-supervised `dst.py`: heads 2048 wide, worst-case loss weight
eta 1 with eta' 2, the reversal warm-started to 0.1 over 1000 steps,
self-training trade-off 1, labelled strong-view cross-entropy at 0.1, and its
CIFAR-10 run's (4 labels per class) threshold 0.7; its learning rate there:
0.003 (the shared 0.01 on the embedded tasks, configs/default.py).
"""

import ml_collections

from configs import default


def get_config(arg: str = "ssl_digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "dst",
      "threshold": 0.7,
      "trade_off": 1.0,
      "trade_off_cls_strong": 0.1,
      "eta": 1.0,
      "eta_prime": 2.0,
      "width": 2048,
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 0.1,
      "grl_max_steps": 1000,
  })
  return config
