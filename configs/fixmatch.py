"""FixMatch for domain adaptation (Sohn et al. 2020): confident weak-view
predictions label the strong view of the same target image.

    python -m tljax.main --config=configs/fixmatch.py:digits --workdir=/tmp/tljax/fixmatch

TLlib's `fixmatch.py`: confidence threshold 0.9, trade-off 1, labels from the
weak view (the training augmentation, `config.data.train_preprocess`),
cross-entropy on the strong view (`config.data.strong_preprocess`), one pass
per view and domain.

Digits: the weak view shifts by up to 2 pixels (FixMatch's flip-and-shift
without the flip), the strong view is `digits_strong` (RandAugment-like
affine, brightness and contrast, then cutout); tljax's shared digits
optimizer.

Semi-supervised tasks (`ssl_digits`, `ssl_synth`, configs/default.py):
TLlib's semi-supervised `fixmatch.py`, threshold 0.7 (its CIFAR-10 run with 4
labels per class, and most of its runs), trade-off 1, labelled strong-view
cross-entropy at 0.1; its CIFAR-10 learning rate: 0.003 (the shared 0.01 of
the embedded tasks):

    python -m tljax.main --config=configs/fixmatch.py:ssl_digits --workdir=/tmp/tljax/fixmatch_ssl

Office-31 (ResNet-50, TLlib's hyperparameters for A -> W: lr 0.001,
lr-gamma 0.0004, wd 1e-3, bottleneck 256, 20 epochs x 1000 iterations
(TLlib fixmatch.sh); strong view `imagenet_strong`, RandAugment
rand-m10-n2-mstd2 after a random resized crop of scale 0.5..1). Deviations:
TLlib's unlabelled batch is 96 with a source batch of 32, here both are
`config.batch_size`; TLlib's weak target view crops at scale 0.5..1, here
it is the source's training transform (scale 0.08..1):

    python -m tljax.main --config=configs/fixmatch.py:office31 --workdir=/tmp/tljax/fixmatch_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "fixmatch",
      "threshold": 0.9,
      "trade_off": 1.0,
  })
  if arg in default.SSL_DATASETS:
    config.method.threshold = 0.7
    config.method.trade_off_cls_strong = 0.1
  elif arg == "office31":
    config.data.strong_preprocess = ml_collections.ConfigDict({"name": "imagenet_strong",
                                                               "scale": (0.5, 1.0)})
    config.optimizer.learning_rate = 0.001
    config.schedule.gamma = 0.0004
  else:
    config.data.train_preprocess = ml_collections.ConfigDict({"name": "digits",
                                                              "random_shift": 2})
    config.data.strong_preprocess = ml_collections.ConfigDict({"name": "digits_strong"})
  return config
