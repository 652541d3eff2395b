"""SHOT (Liang et al. 2020): source-free adaptation of a source model's encoder.

SHOT never reads source data; it starts from a model trained on the source.
Two commands: a source_only run, then SHOT from its workdir (the network must
match: same backbone, bottleneck and head):

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/source
    python -m tljax.main --config=configs/shot.py:digits --workdir=/tmp/tljax/shot \\
        --config.model.init=/tmp/tljax/source

The paper's hyperparameters (not in TLlib; the authors' code,
github.com/tim-learn/SHOT, object/image_target.py): beta 0.3 on the
pseudo-label cross-entropy, information maximisation at 1, epsilon 1e-5,
pseudo-labels from two rounds of weighted k-means over cosine distance,
recomputed at the start of every pass over the target split, the head
frozen, the backbone at 0.1x the learning rate, SGD + nesterov (momentum 0.9,
wd 1e-3), learning rate `lr (1 + 10 p)^-0.75` (`schedule.gamma` = 10 /
total_steps), batch 64, 15 epochs of the target split.

Digits: 15 epochs of Digits-M (598 images, 10 steps of 64). Synthetic task:
15 epochs of the 1,797 target digits (29 steps of 64). In a sweep, a row with
`"init_from": "source_only"` starts each seed from that seed's source_only run
(`experiments/grids/synth.py`). MNIST tasks: 15 epochs of the target `train`
split, 1,670 MNIST-M digits (27 steps) or 1,198 UCI digits (19 steps).

Office-31 (ResNet-50, the authors' hyperparameters: lr 0.01, bottleneck 256,
15 epochs of the target: 195 steps for Webcam; set `total_steps` to
15 x ceil(target size / 64) for other targets):

    python -m tljax.main --config=configs/source_only.py:office31 --workdir=/tmp/tljax/source_a \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31 \\
        --config.model.bottleneck_dim=256 --config.model.dont_load='("head/.*","bottleneck/.*")'
    python -m tljax.main --config=configs/shot.py:office31 --workdir=/tmp/tljax/shot_a2w \\
        --config.model.init=/tmp/tljax/source_a --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default

# Batches of 64 in one pass over each task's target split.
_TARGET_BATCHES = {"digits": 10, "synth": 29, "synth_m": 29, "mnist_m": 27, "mnist_digits": 19,
                   "office31": 13}


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  if arg not in _TARGET_BATCHES:
    raise ValueError(f"unknown SHOT task {arg!r}: choose one of {sorted(_TARGET_BATCHES)}")
  config = default.get_config(arg)
  office = arg == "office31"
  config.method = ml_collections.ConfigDict({
      "name": "shot",
      "beta": 0.3,
      "trade_off_im": 1.0,
      "epsilon": 1e-5,
      "clustering_rounds": 2,
      "min_class_count": 0,
  })
  config.model.init = ""  # the source_only workdir (see above)
  if office:
    config.model.init_recipe = (
        "Train the source model first, then start from its workdir: `python -m tljax.main "
        "--config=configs/source_only.py:office31 --workdir=/tmp/tljax/source_a "
        "--config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31 "
        "--config.model.bottleneck_dim=256 --config.model.dont_load='(\"head/.*\",\"bottleneck/.*\")'` "
        "then `python -m tljax.main --config=configs/shot.py:office31 --workdir=/tmp/tljax/shot_a2w "
        "--config.model.init=/tmp/tljax/source_a --config.manual_dir=/path/to/office31`.")
  else:
    config.model.init_recipe = (
        f"Train the source model first, then start from its workdir: `python -m tljax.main "
        f"--config=configs/source_only.py:{arg} --workdir=/tmp/tljax/source` then `python -m "
        f"tljax.main --config=configs/shot.py:{arg} --workdir=/tmp/tljax/shot "
        f"--config.model.init=/tmp/tljax/source`.")
  config.model.dont_load = ()  # the whole source model, head included
  config.batch_size = 64
  config.total_steps = 15 * _TARGET_BATCHES[arg]  # 15 epochs of the target split
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 1e-3
  config.schedule.gamma = 10.0 / config.get_ref("total_steps").to_float()
  config.schedule.power = 0.75
  if office:
    config.model.bottleneck_dim = 256
    config.param_groups = (("classifier/head/.*", "frozen"), ("classifier/backbone/.*", 0.1),
                           (".*", 1.0))
    config.eval_every = 13
    config.checkpoint_every = 65
  else:
    config.param_groups = (("classifier/head/.*", "frozen"), (".*", 1.0))
    config.eval_every = 50
    config.checkpoint_every = 50
  return config
