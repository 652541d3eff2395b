"""Pseudo-label self-training on the target: confident predictions become labels.

    python -m tljax.main --config=configs/pseudo_label.py:digits --workdir=/tmp/tljax/pseudo_label
    python -m tljax.main --config=configs/combine.py:dann+pseudo_label,digits --workdir=/tmp/tljax/dann_pl

TLlib's `ConfidenceBasedSelfTrainingLoss` on the target batch with its own
detached predictions as teacher: threshold 0.9 (TLlib's FixMatch for domain
adaptation; its semi-supervised Pseudo-Label example uses 0.95), trade-off
1, one pass per domain as TLlib's self-training examples.

Semi-supervised tasks (`ssl_digits`, `ssl_synth`, configs/default.py):
TLlib's semi-supervised `pseudo_label.py`, threshold 0.8 (its CIFAR-10 run
with 4 labels per class), trade-off 1, labelled strong-view cross-entropy at
0.1 (`trade_off_cls_strong`, a last pass); its CIFAR-10 learning rate: 0.003
(the shared 0.01 of the embedded tasks):

    python -m tljax.main --config=configs/pseudo_label.py:ssl_digits --workdir=/tmp/tljax/pl_ssl

Office-31 (ResNet-50; TLlib has no pseudo-label DA example: tljax's Office-31
defaults, TLlib's DANN recipe: lr 0.01, lr-gamma 0.001, wd 1e-3, batch 32,
bottleneck 256, 20 epochs x 1000 iterations):

    python -m tljax.main --config=configs/pseudo_label.py:office31 --workdir=/tmp/tljax/pl_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "threshold": 0.9,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("pseudo_label", "per_domain", {"pseudo_label": term(arg)})
  if arg in default.SSL_DATASETS:
    config.method.threshold = 0.8
    config.method.trade_off_cls_strong = 0.1
  return config
