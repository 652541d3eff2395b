"""Defaults every tljax config starts from, for each task family.

    python -m tljax.main --config=configs/default.py:digits --workdir=/tmp/tljax/default

`get_config('digits')`: the embedded Digits -> Digits-M task with a small CNN
trained from scratch. `get_config('synth')` / `get_config('synth_m')`: the
larger embedded SynthDigits -> real digits tasks (same network). `get_config('office31')`: Office-31 A -> W with an
ImageNet ResNet-50 (TLlib's setting; set `config.model.init` to the torchvision
checkpoint and `config.manual_dir` to the dataset, other tasks via
`--config.source=office31/dslr --config.target=office31/amazon`).

Regression tasks, `<dataset>_<source>2<target>` (TLlib's image regression:
predict a sprite's scale and position, mean absolute error): `sprites_c2n`,
... over the embedded dSprites-like `sprites` domains (`b` binary, `c` color,
`n` noisy, `p` photo; 32 px, the small CNN from scratch, minutes on a CPU),
and for users with the files, TLlib's `dsprites_c2n`, ... (`c` color, `n`
noisy, `s` scream) and `mpi3d_rl2rc`, ... (`rl` real, `rc` realistic, `t`
toy) with an ImageNet ResNet-18 at 128 px (`config.model.init`,
`config.manual_dir`). Each regression method config sets its TLlib recipe
through `regression_recipe`.

Method configs (`configs/<method>.py:<task>`) start here and override a few
fields; any field can also be set on the command line, e.g.
`--config.total_steps=500 --config.optimizer.learning_rate=0.03`.
"""

import ml_collections

CLASSIFICATION_TASKS = ("digits", "synth", "synth_m", "office31")
# Regression datasets: each domain's letter in a task name, and the domain.
REGRESSION_DOMAINS = {
    "sprites": {"b": "sprites/binary", "c": "sprites/color", "n": "sprites/noisy",
                "p": "sprites/photo"},
    "dsprites": {"c": "dsprites/color", "n": "dsprites/noisy", "s": "dsprites/scream"},
    "mpi3d": {"rl": "mpi3d/real", "rc": "mpi3d/realistic", "t": "mpi3d/toy"},
}
REGRESSION_TASKS = tuple(f"{dataset}_{source}2{target}"
                         for dataset, domains in REGRESSION_DOMAINS.items()
                         for source in domains for target in domains if source != target)
TASKS = CLASSIFICATION_TASKS + REGRESSION_TASKS


def is_regression(arg: str) -> bool:
  return arg in REGRESSION_TASKS


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  if arg not in TASKS:
    shown = ", ".join(CLASSIFICATION_TASKS + REGRESSION_TASKS[:2])
    raise ValueError(f"unknown task {arg!r}: choose one of {shown}, ... "
                     "(configs/default.py: TASKS)")
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters, dropout and data order all derive from it

  # Task (tljax/data/task.py): `dataset[/config]` names, or image_folder:PATH /
  # image_list:FILE. `source`: the labelled domain, or several separated by
  # commas (multi-source adaptation, domain generalisation). `target`: the
  # unlabelled domain, whose labels only evaluation reads; "" for none (domain
  # generalisation). `test_domains`: held-out domains (comma-separated), read
  # only by the final evaluation.
  config.source = "digits"
  config.target = "digits_m"
  config.test_domains = ""
  # How the source's and target's classes relate: closed_set (the same), partial
  # (the target has a subset), open_set (the target also has classes the source
  # lacks, which evaluation reads as one "unknown" label), universal (both have
  # private classes). "": closed_set, or the setting of `data.label_sets`.
  # Checked against the domains' class lists: a mismatch names the setting.
  config.setting = ""
  # Open-set / universal evaluation: a target example is "unknown" when its
  # largest known-class probability is below this (TLlib's open-set rule and
  # default); methods with their own rule (OSBP, UAN) override it.
  config.unknown_threshold = 0.8
  # The kind of labels this config is for: 'classification' or 'regression'
  # (float factors); a domain of the other kind stops the run with one line.
  # "": whatever the domains hold.
  config.label_kind = "classification"
  # Regression tasks (float factors): the training loss on the labelled data.
  config.regression_loss = "l2"  # l2 (TLlib's mse) | l1
  config.source_split = "train"
  config.target_split = "train"
  config.eval_source_split = "test"
  config.eval_target_split = "test"
  # Held-out labelled source data for the source-based validators (source
  # accuracy, DEV, IWCV); "" computes only the target-only ones.
  config.source_val_split = "test"
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
  # A second augmentation of each target image, for methods that read two views
  # (FixMatch's strong view: see configs/fixmatch.py).
  config.data.strong_preprocess = ml_collections.ConfigDict({"name": "digits_strong"})
  # Another task on the same images (tljax/data/views.py): 'parity' or 'ge5'
  # turn the ten digits into two classes in every split; None keeps the labels.
  config.data.label_map = ml_collections.config_dict.placeholder(str)
  # A seeded, class-stratified fraction of the labelled training split (label
  # budgets of fine-tuning: 0.01, 0.1, 1.0); every class keeps at least one.
  config.data.source_fraction = 1.0
  config.data.source_subset_seed = 0
  # Class selections (names, indices or ranges a-b, comma-separated; "" = all)
  # of the labelled domains and of the target / held-out domains, or a named
  # protocol that sets both and the setting (tljax.data.task.PRESETS, e.g.
  # office31_partial, office31_open_set, digits_universal).
  config.data.source_classes = ""
  config.data.target_classes = ""
  config.data.label_sets = ""
  # Semi-supervised: N labelled examples per class of the source split (seeded
  # by source_subset_seed); when the target names the same dataset and split,
  # the rest of it is the unlabelled data. 0: every label.
  config.data.labels_per_class = 0
  # Training-domain validation (DomainBed): a seeded, class-stratified part of
  # each labelled domain's training split held out as `source_val` for the
  # source-based validators. 0: use `source_val_split` instead.
  config.data.holdout_fraction = 0.0
  config.data.holdout_seed = 0
  # Several labelled domains: each contributes `batch_size` examples to every
  # step ('per_domain', TLlib's / DomainBed's way), or they are pooled into one
  # stream of `batch_size` examples ('pooled': a single-source method on the
  # union of the sources).
  config.data.source_sampling = "per_domain"

  # Network: backbone -> bottleneck -> head, returning (features, logits).
  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.backbone_kwargs = ml_collections.ConfigDict({
      "widths": (16, 32, 64),
      "kernel_sizes": (3, 3, 3),
      "conv_impl": "auto",  # CPU: "cpu"; accelerators: "xla" (see tljax/models/small_cnn.py)
      "kernel_init": "flax",  # or "torch" (PyTorch's Conv2d default)
  })
  config.model.bottleneck_dim = 256  # 0: no bottleneck
  config.model.bottleneck_norm = True  # Linear -> [BatchNorm] -> ReLU -> [Dropout]
  config.model.bottleneck_dropout = 0.0
  config.model.head_type = ""  # linear | two_layer (MDD) | mcd (MCD); "": two_layer iff head_hidden
  config.model.head_hidden = 0  # hidden width of a two_layer or mcd head
  config.model.head_dropout = 0.5
  config.model.bottleneck_l2_preserving_dropout = False  # TLlib's AFN: units scaled 1/sqrt(1-p)
  # bottleneck + head init: torch | tllib_mdd | tllib_afn | tllib_regressor
  config.model.init_scheme = "torch"
  # The head's output activation: "" (logits) or "sigmoid" (regressors, factors in [0, 1]).
  config.model.output_activation = ""
  config.model.dtype = "float32"  # compute dtype (bfloat16 on GPU/TPU); params stay fp32
  # ("float64", with jax_enable_x64, computes and keeps everything in fp64: parity tests)
  # Where the classifier starts: a pretrained checkpoint (.safetensors, .pth,
  # .npz), or a tljax run (its workdir, or <workdir>/checkpoints/<step>).
  config.model.init = ""
  config.model.dont_load = ()  # regexes over the classifier's variables that keep their init

  # Method: what a training step does (see tljax/methods); each configs/<method>.py
  # states all of its fields.
  config.method = ml_collections.ConfigDict({"name": "source_only"})

  # Steps and batches (batch_size is global, per domain: each step sees
  # batch_size source + batch_size target examples).
  config.total_steps = 2000
  config.batch_size = 64
  config.eval_batch_size = 256
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 2  # the latest N; steps a validator selects are kept too

  # Unsupervised model selection (tljax/validators.py), computed at every
  # evaluation on `source_val_split` and the unlabelled target training split.
  config.validation = ml_collections.ConfigDict()
  config.validation.validators = ("source_accuracy", "target_entropy", "snd", "bnm", "dev",
                                  "iwcv")
  config.validation.max_examples = 4000  # validators read at most this many examples per domain

  # Optimizer: TLlib's SGD + nesterov and its inverse decay schedule (TLlib's
  # DANN/CDAN setting, shared by every method on the digits task so that
  # comparisons isolate the adaptation term).
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | adam | adamw
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-3
  config.optimizer.no_decay = ()  # regexes of parameters without weight decay, e.g. ('.*/bias',)
  config.optimizer.b1 = 0.9  # adam / adamw
  config.optimizer.b2 = 0.999
  config.optimizer.grad_clip_norm = 0.0  # 0: off
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "inverse"  # lr * (1 + gamma * step) ** (-power)
  config.schedule.gamma = 0.001
  config.schedule.power = 0.75
  config.schedule.warmup_steps = 0
  config.schedule.boundaries = ()  # 'step': multiply by `decay` at these steps
  config.schedule.decay = 0.1

  # (regex over '/'-joined parameter paths, group); first match wins. A group is
  # 'frozen', a learning-rate multiplier, or a dict of settings (lr_mult,
  # momentum, weight_decay, nesterov, b1, b2). Paths: classifier/backbone/...,
  # classifier/bottleneck/..., classifier/head/..., method/<network>/...
  # From scratch, everything trains at the base rate.
  config.param_groups = ((".*", 1.0),)
  if arg in ("synth", "synth_m"):
    _synth(config, arg)
  if arg == "office31":
    _office31(config)
  if is_regression(arg):
    _regression(config, arg)
  return config


def terms_method(name: str, forward: str, terms: dict[str, ml_collections.ConfigDict], *,
                 pretrain_steps: int = 0, pretrain_lr_scale: float = 1.0) -> ml_collections.ConfigDict:
  """`config.method` of adaptation terms (see tljax/methods/terms.py).

  Args:
    name: one term ('dann') or several joined by '+' ('cdan+mcc').
    forward: 'joint' (one pass over [source; target]) or 'per_domain'.
    terms: each term's fields by name; a single term's are flat in
      `config.method`, several terms' nested under their names.
    pretrain_steps: source-only steps before the terms switch on (TLlib's BSP).
    pretrain_lr_scale: the pre-training learning rate relative to the main one.
  """
  method = ml_collections.ConfigDict({"name": name, "forward": forward,
                                      "pretrain_steps": pretrain_steps,
                                      "pretrain_lr_scale": pretrain_lr_scale})
  if len(terms) == 1:
    method.update(next(iter(terms.values())))
  else:
    for term_name, fields in terms.items():
      method[term_name] = fields
  return method


def _synth(config: ml_collections.ConfigDict, arg: str) -> None:
  """SynthDigits -> real handwritten digits (embedded, built on first use): 20,000
  rendered digits as the source; all 1,797 scikit-learn digits (`synth`) or their
  Digits-M blend (`synth_m`) as the target, adapted to and evaluated on
  transductively (every target image, as TLlib on Office-31). A held-out
  train/test variant: --config.target_split=train --config.eval_target_split=test."""
  config.source = "synth_digits"
  config.target = "digits_full" if arg == "synth" else "digits_m_full"
  config.target_split = "all"
  config.eval_target_split = "all"


def _regression(config: ml_collections.ConfigDict, arg: str) -> None:
  """A regression task: TLlib's image-regression setting (a sigmoid head on
  factors in [0, 1], the mean squared error, SGD at 0.1 with its inverse
  decay (gamma 1e-4), no augmentation: TLlib only resizes). The method
  configs add their own recipe (`regression_recipe`).

  The embedded `sprites_*` tasks use the small CNN from scratch at 32 px
  (TLlib: an ImageNet ResNet-18 at 128 px), and one budget for every method
  (batch, steps), as the digits tasks do; `dsprites_*` and `mpi3d_*` are
  TLlib's setting (ResNet-18, 128 px, backbone at 0.1x the learning rate,
  each method's batch and epochs of TLlib's .sh files)."""
  dataset, _, pair = arg.partition("_")
  source, _, target = pair.partition("2")
  config.source = REGRESSION_DOMAINS[dataset][source]
  config.target = REGRESSION_DOMAINS[dataset][target]
  config.label_kind = "regression"
  config.regression_loss = "l2"
  config.model.output_activation = "sigmoid"
  # The classification validators read class probabilities; a regressor has
  # held-out source error (tljax/validators.py, `label_kind`).
  config.validation.validators = ("source_mae",)
  config.optimizer.learning_rate = 0.1
  config.schedule.gamma = 0.0001
  if dataset == "sprites":
    config.data.image_size = 32
    config.total_steps = SPRITES_STEPS
    config.batch_size = 64
    return
  config.data.image_size = 128
  # TLlib: Resize(128), ToTensor, ImageNet normalisation, for training and
  # evaluation: the whole image (a crop as large as the resized frame).
  for preprocess in ("train_preprocess", "eval_preprocess"):
    config.data[preprocess] = ml_collections.ConfigDict({"name": "imagenet_eval", "resize": 128})
  config.data.cache = False
  config.data.num_threads = 8
  config.model.name = "resnet18"
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  config.model.init = ""  # the torchvision ImageNet resnet18 .safetensors/.pth file
  config.model.dont_load = ("head/.*", "bottleneck/.*")
  config.param_groups = (("classifier/backbone/.*", 0.1), (".*", 1.0))
  config.eval_batch_size = 128
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000


# Steps of every method on the embedded sprites tasks (batch 64).
SPRITES_STEPS = 2000


def regression_recipe(config: ml_collections.ConfigDict, arg: str, *, bottleneck_dim: int,
                      bottleneck_norm: bool, weight_decay: float,
                      batch_size: dict[str, int], epochs: dict[str, int]) -> None:
  """A method's TLlib image-regression recipe on task `arg`.

  Args:
    config: a regression task's config (`get_config(arg)`).
    arg: the task.
    bottleneck_dim: the bottleneck's width (TLlib's ERM and DD: 512 with
      BatchNorm, as wide as ResNet-18's features; DANN, RSD: 256 without).
    bottleneck_norm: BatchNorm in the bottleneck.
    weight_decay: TLlib's `--wd` of the method.
    batch_size: TLlib's batch per dataset ('dsprites', 'mpi3d').
    epochs: TLlib's epochs (of 500 iterations) per dataset.
  """
  dataset = arg.partition("_")[0]
  config.model.bottleneck_dim = bottleneck_dim
  config.model.bottleneck_norm = bottleneck_norm
  config.optimizer.weight_decay = weight_decay
  if dataset != "sprites":
    config.batch_size = batch_size[dataset]
    config.total_steps = 500 * epochs[dataset]


def tllib_dan_office31(config: ml_collections.ConfigDict) -> None:
  """TLlib's DAN/JAN Office-31 optimizer: lr 0.003, lr-gamma 0.0003, wd 5e-4,
  20 epochs x 500 iterations."""
  config.optimizer.learning_rate = 0.003
  config.optimizer.weight_decay = 5e-4
  config.schedule.gamma = 0.0003
  config.total_steps = 10000


def _office31(config: ml_collections.ConfigDict) -> None:
  """TLlib's Office-31 recipe: ImageNet ResNet-50 fine-tuned (backbone at 0.1x),
  224 px crops, evaluation on all target images (the adaptation set)."""
  config.source = "office31/amazon"
  config.target = "office31/webcam"
  config.eval_source_split = "train"
  config.eval_target_split = "train"
  # Office-31 domains have one split; for source-based validators hold part out:
  # --config.source_split='train[:90%]' --config.source_val_split='train[90%:]'.
  config.source_val_split = ""
  config.data.image_size = 224
  # crop: "random_resized" (scale 0.08-1, TLlib's default) or "random" (TLlib's 'ran.crop').
  config.data.train_preprocess = ml_collections.ConfigDict({"name": "imagenet_train",
                                                            "crop": "random_resized"})
  config.data.eval_preprocess = ml_collections.ConfigDict({"name": "imagenet_eval"})
  config.data.strong_preprocess = ml_collections.ConfigDict({"name": "imagenet_strong"})
  config.data.cache = False
  config.data.num_threads = 8
  config.model.name = "resnet50"
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  config.model.init = ""  # the torchvision ImageNet resnet50 .safetensors/.pth file
  config.model.dont_load = ("head/.*", "bottleneck/.*")
  config.param_groups = (("classifier/backbone/.*", 0.1), (".*", 1.0))
  config.batch_size = 32
  config.eval_batch_size = 128
  config.total_steps = 20000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
