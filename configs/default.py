"""Defaults every tljax config starts from: Digits -> Digits-M with a small CNN.

    python -m tljax.main --config=configs/default.py --workdir=/tmp/tljax/default

Method configs (`configs/<method>.py:<dataset>`) call `get_config()` here and
override a few fields; any field can also be set on the command line,
e.g. `--config.total_steps=500 --config.optimizer.learning_rate=0.03`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters, dropout and data order all derive from it

  # Task: `dataset[/config]` TFDS names; target labels are only used for evaluation.
  config.source = "digits"
  config.target = "digits_m"
  config.source_split = "train"
  config.target_split = "train"
  config.eval_source_split = "test"
  config.eval_target_split = "test"
  config.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  config.manual_dir = ml_collections.config_dict.placeholder(str)  # user-provided files

  config.data = ml_collections.ConfigDict()
  config.data.image_size = 28
  config.data.train_preprocess = ml_collections.ConfigDict({"name": "digits"})
  config.data.eval_preprocess = ml_collections.ConfigDict({"name": "digits"})
  config.data.cache = True  # decode the (small) splits into memory once
  config.data.num_threads = 4  # reader threads per process

  # Network: backbone -> bottleneck -> head, returning (features, logits).
  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.backbone_kwargs = ml_collections.ConfigDict({
      "widths": (16, 32, 64),
      "kernel_sizes": (3, 3, 3),
      "conv_impl": "xla",  # or "im2col" (see tljax/models/small_cnn.py)
  })
  config.model.bottleneck_dim = 256  # 0: no bottleneck
  config.model.bottleneck_dropout = 0.5
  config.model.dtype = "float32"  # compute dtype (bfloat16 on GPU/TPU); params stay fp32
  config.model.init = ""  # pretrained checkpoint to start from
  config.model.dont_load = ()  # regexes of parameters that keep their fresh init

  # Method: how target data joins the loss (see tljax/methods).
  config.method = ml_collections.ConfigDict({"name": "source_only"})

  # Steps and batches (batch_size is global, per domain: each step sees
  # batch_size source + batch_size target examples).
  config.total_steps = 1000
  config.batch_size = 32
  config.eval_batch_size = 256
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 2

  # Optimizer: TLlib's SGD + nesterov and its inverse decay schedule.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | adam | adamw
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.optimizer.grad_clip_norm = 0.0  # 0: off
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "inverse"  # lr * (1 + gamma * step) ** (-power)
  config.schedule.gamma = 0.001
  config.schedule.power = 0.75
  config.schedule.warmup_steps = 0

  # (regex over '/'-joined parameter paths, 'frozen' | lr multiplier); first match wins.
  config.param_groups = [(".*", 1.0)]
  return config
