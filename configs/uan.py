"""UAN (You et al. 2019): transferability-weighted adversarial alignment (universal DA).

    python -m tljax.main --config=configs/uan.py:synth_universal --workdir=/tmp/tljax/uan

The authors' code (github.com/thuml/Universal-Domain-Adaptation): each
example weighted by its transferability (normalised prediction entropy and a
non-adversarial discriminator's domain similarity; class temperature 10 on
the source, 1 on the target), an adversarial discriminator aligning the
weighted domains (reversal warming up over 10,000 calls, two per step); both
discriminators 1024-1024 without BatchNorm (Dropout 0.5); the cross-entropy
on the softmax probabilities; at test a target example is unknown when its
transferability is below w0 = -0.5. Embedded task: SynthDigits 0-6 -> real
digits 3-9 (3-6 shared, 7-9 unknown), with the optimizer every embedded
method shares.

Office-31 universal (the authors' protocol: 10 shared classes, 10
source-private, 11 target-private; ResNet-50 (theirs keeps the first BatchNorm
in evaluation mode: not here), a linear bottleneck of 256, lr 0.001 (backbone
0.1x), wd 5e-4, batch 36, 20,000 steps, 256 -> 224 random crops of the shorter side):

    python -m tljax.main --config=configs/uan.py:office31 --workdir=/tmp/tljax/uan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def get_config(arg: str = "synth_universal") -> ml_collections.ConfigDict:
  config = default.get_config("office31_universal" if arg == "office31" else arg)
  config.method = ml_collections.ConfigDict({
      "name": "uan",
      "trade_off": 1.0,
      "hidden_sizes": (1024, 1024),
      "dropout": 0.5,
      "source_class_temperature": 10.0,
      "target_class_temperature": 1.0,
      "domain_temperature": 1.0,
      "w0": -0.5,
      "grl_alpha": 10.0,
      "grl_max_calls": 10000,
      "cross_entropy_on": "probabilities",
  })
  if arg == "office31":
    # The authors' CLS: Linear(2048, 256) -> Linear(256, K), nothing between.
    config.model.bottleneck_norm = False
    config.model.bottleneck_relu = False
    config.batch_size = 36
    config.optimizer.learning_rate = 0.001
    config.optimizer.weight_decay = 5e-4
    config.schedule.gamma = 0.001  # their 10 / 10,000
    config.schedule.power = 0.75
    config.total_steps = 20000
    config.data.train_preprocess = ml_collections.ConfigDict(
        {"name": "imagenet_train", "crop": "random", "resize_mode": "shorter_side"})
    config.data.eval_preprocess = ml_collections.ConfigDict(
        {"name": "imagenet_eval", "resize_mode": "shorter_side"})
  return config
