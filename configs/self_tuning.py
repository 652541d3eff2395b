"""Self-Tuning (Wang et al. 2021): pseudo-group contrast with a momentum key encoder and a per-class queue.

    python -m tljax.main --config=configs/self_tuning.py:ssl_digits --workdir=/tmp/tljax/self_tuning

TLlib's semi-supervised `self_tuning.py`: projection 1024 wide, 32 keys per
class in the queue, key-encoder momentum 0.999, temperature 0.07; both views
of every image (labelled and unlabelled) are strong augmentations
(`config.data.train_preprocess` and `key_preprocess`: `digits_strong`), and
no strong-view term is added. TLlib trains it with its own schedule (lr
0.003, x0.1 at 12, 24, 36 and 48 of 60 epochs; the projector at the
backbone's 0.1x when fine-tuning); here the shared optimizer of the
embedded tasks (configs/default.py), the projector at the base rate. TLlib's
schedule: --config.schedule.name=step
"--config.schedule.boundaries=(400, 800, 1200, 1600)" --config.optimizer.learning_rate=0.003.
"""

import ml_collections

from configs import default


def get_config(arg: str = "ssl_digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "self_tuning",
      "projection_dim": 1024,
      "queue_size": 32,
      "momentum": 0.999,
      "temperature": 0.07,
  })
  config.data.train_preprocess = ml_collections.ConfigDict(config.data.strong_preprocess)
  config.data.key_preprocess = ml_collections.ConfigDict(config.data.strong_preprocess)
  return config
