"""Defaults every tljax config starts from, for each task family.

    python -m tljax.main --config=configs/default.py:digits --workdir=/tmp/tljax/default

`get_config('digits')`: the embedded Digits -> Digits-M task with a small CNN
trained from scratch. `get_config('office31')`: Office-31 A -> W with an
ImageNet ResNet-50 (TLlib's setting; set `config.model.init` to the torchvision
checkpoint and `config.manual_dir` to the dataset, other tasks via
`--config.source=office31/dslr --config.target=office31/amazon`).

Method configs (`configs/<method>.py:<task>`) start here and override a few
fields; any field can also be set on the command line, e.g.
`--config.total_steps=500 --config.optimizer.learning_rate=0.03`.
"""

import ml_collections

TASKS = ("digits", "office31")


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  if arg not in TASKS:
    raise ValueError(f"unknown task {arg!r}: choose one of {TASKS}")
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
  config.data.num_threads = 2  # background threads assembling batches, per process
  config.data.num_workers = 0  # worker processes (each with num_threads) for heavy decoding
  config.data.skip_corrupt = False  # True: leave unreadable images out of a build (logged)

  # Network: backbone -> bottleneck -> head, returning (features, logits).
  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.backbone_kwargs = ml_collections.ConfigDict({
      "widths": (16, 32, 64),
      "kernel_sizes": (3, 3, 3),
      "conv_impl": "xla",  # or "im2col" (see tljax/models/small_cnn.py)
  })
  config.model.bottleneck_dim = 256  # 0: no bottleneck
  config.model.bottleneck_norm = True  # Linear -> [BatchNorm] -> ReLU -> [Dropout]
  config.model.bottleneck_dropout = 0.0
  config.model.head_hidden = 0  # 0: linear head; else a two-layer head (MDD: 1024)
  config.model.head_dropout = 0.5
  config.model.dtype = "float32"  # compute dtype (bfloat16 on GPU/TPU); params stay fp32
  config.model.init = ""  # pretrained checkpoint to start from
  config.model.dont_load = ()  # regexes of parameters that keep their fresh init

  # Method: how target data joins the loss (see tljax/methods).
  config.method = ml_collections.ConfigDict({"name": "source_only"})

  # Steps and batches (batch_size is global, per domain: each step sees
  # batch_size source + batch_size target examples).
  config.total_steps = 2000
  config.batch_size = 64
  config.eval_batch_size = 256
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 2

  # Optimizer: TLlib's SGD + nesterov and its inverse decay schedule (TLlib's
  # DANN/CDAN setting, shared by every method on the digits task so that
  # comparisons isolate the adaptation term).
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | adam | adamw
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-3
  config.optimizer.grad_clip_norm = 0.0  # 0: off
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "inverse"  # lr * (1 + gamma * step) ** (-power)
  config.schedule.gamma = 0.001
  config.schedule.power = 0.75
  config.schedule.warmup_steps = 0

  # (regex over '/'-joined parameter paths, 'frozen' | lr multiplier); first match
  # wins. From scratch, everything trains at the base rate.
  config.param_groups = [(".*", 1.0)]
  if arg == "office31":
    _office31(config)
  return config


def _office31(config: ml_collections.ConfigDict) -> None:
  """TLlib's Office-31 recipe: ImageNet ResNet-50 fine-tuned (backbone at 0.1x),
  224 px crops, evaluation on all target images (the adaptation set)."""
  config.source = "office31/amazon"
  config.target = "office31/webcam"
  config.eval_source_split = "train"
  config.eval_target_split = "train"
  config.data.image_size = 224
  # crop: "random_resized" (scale 0.08-1, TLlib's default) or "random" (TLlib's 'ran.crop').
  config.data.train_preprocess = ml_collections.ConfigDict({"name": "imagenet_train",
                                                            "crop": "random_resized"})
  config.data.eval_preprocess = ml_collections.ConfigDict({"name": "imagenet_eval"})
  config.data.cache = False
  config.data.num_threads = 8
  config.model.name = "resnet50"
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  config.model.init = ""  # the torchvision ImageNet resnet50 .safetensors/.pth file
  config.model.dont_load = ("head/.*", "bottleneck/.*")
  config.param_groups = [("backbone/.*", 0.1), (".*", 1.0)]
  config.batch_size = 32
  config.eval_batch_size = 128
  config.total_steps = 20000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
