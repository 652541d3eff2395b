"""Mean teacher / self-ensembling (French et al. 2018): consistency with an EMA teacher.

    python -m tljax.main --config=configs/mean_teacher.py:digits --workdir=/tmp/tljax/mean_teacher

TLlib's `self_ensemble.py`: EMA decay 0.99, teacher confidence threshold 0.8,
L2 consistency between student and teacher softmax at trade-off 3, class
balance loss at 0.01, the student on a training augmentation of the target
image and the teacher on the evaluation transform of the same image
(`config.data.teacher_preprocess`), one pass per domain for the student, no
source pre-training (TLlib's `--pretrain-epochs 0`; start from a source_only
run with `--config.model.init=<workdir>` to add one). TLlib evaluates the
student (`method.evaluate='student'`); `--config.method.evaluate=teacher`
evaluates the EMA weights.

Digits: tljax's shared digits optimizer, with a random shift of up to 2 pixels
as the training augmentation, so that the two views differ.

Semi-supervised tasks (`ssl_digits`, `ssl_synth`, configs/default.py):
TLlib's semi-supervised `mean_teacher.py`: EMA decay `min(0.999, 1 - 1/t)`,
no confidence mask, no class balance, the L2 consistency summed over the
batch at trade-off 0.1 after a sigmoid warm-up over the first quarter of
training (its 10 of 40 epochs, changing once per fortieth), the student's
BatchNorm statistics copied into the teacher, the teacher on a second weak
view, labelled strong-view cross-entropy at 0.1, the student evaluated; its
CIFAR-10 learning rate (4 labels per class): 0.05 (the shared 0.01 of the
embedded tasks):

    python -m tljax.main --config=configs/mean_teacher.py:ssl_digits --workdir=/tmp/tljax/mt_ssl

Office-31 (ResNet-50, TLlib's hyperparameters: Adam lr 1e-4, lr-gamma 0.001,
no weight decay, batch 36, bottleneck 256, 10 epochs x 1000 iterations
(TLlib self_ensemble.sh)). TLlib's training transform is resize 256, random
crop 224, flip, colour jitter (0.7, 0.7, 0.7, 0.5) and random greyscale;
tljax's `imagenet_train` has no colour jitter or greyscale:

    python -m tljax.main --config=configs/mean_teacher.py:office31 --workdir=/tmp/tljax/mt_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "mean_teacher",
      "ema_decay": 0.99,
      "threshold": 0.8,
      "trade_off": 3.0,
      "trade_off_balance": 0.01,
      "evaluate": "student",  # TLlib's; or "teacher"
  })
  config.data.teacher_preprocess = ml_collections.ConfigDict(config.data.eval_preprocess)
  if arg in default.SSL_DATASETS:
    config.method.update({
        "ema_decay": 0.999, "ema_warmup": True, "threshold": 0.0, "trade_off": 0.1,
        "trade_off_balance": 0.0, "consistency_reduction": "sum",
        "warm_up_steps": config.get_ref("total_steps") // 4,
        "warm_up_interval": config.get_ref("total_steps") // 40,
        "teacher_batch_stats": "student", "trade_off_cls_strong": 0.1})
    config.data.teacher_preprocess = ml_collections.ConfigDict(config.data.train_preprocess)
  elif arg == "office31":
    config.data.train_preprocess = ml_collections.ConfigDict({"name": "imagenet_train",
                                                              "crop": "random"})
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.0
    config.batch_size = 36
    config.total_steps = 10000
  else:
    config.data.train_preprocess = ml_collections.ConfigDict({"name": "digits",
                                                              "random_shift": 2})
  return config
