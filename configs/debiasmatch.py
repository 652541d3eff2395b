"""DebiasMatch (Wang et al. 2022): FixMatch on logits debiased by the mean unlabelled prediction.

    python -m tljax.main --config=configs/debiasmatch.py:ssl_digits --workdir=/tmp/tljax/debiasmatch

TLlib's semi-supervised `debiasmatch.py`: momentum 0.999 of the mean
prediction, self-training trade-off 1, labelled strong-view cross-entropy at
0.1, and its CIFAR-10 run's (4 labels per class) threshold 0.9 and tau 3;
its learning rate there: 0.01 (the shared one on the embedded tasks,
configs/default.py).
"""

import ml_collections

from configs import default


def get_config(arg: str = "ssl_digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "debiasmatch",
      "threshold": 0.9,
      "tau": 3.0,
      "momentum": 0.999,
      "trade_off": 1.0,
      "trade_off_cls_strong": 0.1,
  })
  return config
