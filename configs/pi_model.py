"""Pi-model (Laine & Aila 2017): consistency of two weak views of each unlabelled image.

    python -m tljax.main --config=configs/pi_model.py:ssl_digits --workdir=/tmp/tljax/pi_model
    python -m tljax.main --config=configs/pi_model.py:ssl_digits --workdir=/tmp/tljax/pi_model_25 \\
        --config.data.labels_per_class=25

TLlib's semi-supervised `pi_model.py` defaults: consistency trade-off 0.1
after a sigmoid warm-up over the first quarter of training (its 10 of 40
epochs), the weight changing once per fortieth (an epoch), labelled
strong-view cross-entropy at 0.1. Its CIFAR-10 learning rate (4 labels per
class): 0.01 (the shared 0.01 on the embedded tasks, configs/default.py).
The second view (`config.data.second_preprocess`) is the training
augmentation drawn again.
"""

import ml_collections

from configs import default


def get_config(arg: str = "ssl_digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "pi_model",
      "trade_off": 0.1,
      "trade_off_cls_strong": 0.1,
      "warm_up_steps": config.get_ref("total_steps") // 4,
      "warm_up_interval": config.get_ref("total_steps") // 40,
  })
  config.data.second_preprocess = ml_collections.ConfigDict(config.data.train_preprocess)
  return config
