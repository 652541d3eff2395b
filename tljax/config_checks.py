"""Checks of a run's config and workdir before anything is written.

Every numeric field a run reads is checked here, so that a bad value is one
line naming the field and the fix (`python -m tljax.main` prints it as
`error: ...`), never a traceback from deep inside the step or a silently
wrong run (a negative learning rate ascends the loss). `validate` reads the
config alone (at start-up, building the method to run its own checks);
`check_batch_fits` needs the data, and runs before the workdir is claimed;
`check_resume_step` needs the restored checkpoint, and runs before the run
writes its identity.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import ml_collections

from tljax import methods
from tljax import validators as validators_lib
from tljax import workdir as workdir_lib


class NonFiniteError(FloatingPointError):
  """A step's loss, gradient norm or another metric is NaN or infinite."""


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# Every field configs/default.py defines: the library reads them directly
# (their defaults are written there only), so a config that lacks one (written
# by hand, or before the field existed) is refused at start-up, naming it.
# `method` holds each method's own fields; `*_preprocess` and
# `model.backbone_kwargs` are keyword dicts whose keys are free.
REQUIRED_FIELDS: tuple[str, ...] = tuple(
    f"{section}.{name}" if section else name for section, names in (
        ("", ("seed", "num_seeds", "seed_batching", "source", "target", "test_domains",
              "setting", "unknown_threshold", "label_kind", "regression_loss", "source_split",
              "target_split",
              "eval_source_split", "eval_target_split", "source_val_split", "data_dir",
              "manual_dir", "method", "total_steps", "batch_size", "eval_batch_size",
              "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
              "param_groups")),
        ("data", ("image_size", "train_preprocess", "eval_preprocess", "strong_preprocess",
                  "cache", "num_threads", "num_workers", "skip_corrupt",
                  "allow_repeats_in_batch", "label_map", "source_fraction",
                  "source_subset_seed", "source_classes", "target_classes", "label_sets",
                  "labels_per_class", "holdout_fraction", "holdout_seed", "source_sampling",
                  "domains_per_step")),
        ("model", ("name", "backbone_kwargs", "bottleneck_dim", "bottleneck_norm",
                   "bottleneck_dropout", "bottleneck_layers", "bottleneck_relu", "head_type",
                   "head_hidden", "head_dropout", "bottleneck_l2_preserving_dropout",
                   "feature_dropout", "eval_mode_norm", "init_scheme", "output_activation",
                   "dtype", "init", "dont_load", "init_required", "init_recipe",
                   "aux_loss_weight")),
        ("validation", ("validators", "max_examples")),
        ("optimizer", ("name", "learning_rate", "momentum", "nesterov", "weight_decay",
                       "no_decay", "b1", "b2", "grad_clip_norm")),
        ("schedule", ("name", "gamma", "power", "warmup_steps", "boundaries", "decay")),
    ) for name in names)

# How the step of several seeds runs (`config.seed_batching`, `train.seed_batching`).
SEED_BATCHING = ("auto", "vmap", "unroll")

# (field, predicate, what it must be), each of `REQUIRED_FIELDS`.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
     "an integer >= 0"),
    ("num_seeds", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
     "an integer >= 1"),
    ("seed_batching", lambda v: v in SEED_BATCHING, f"one of {SEED_BATCHING}"),
    ("total_steps", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("eval_batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("log_every", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("eval_every", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("checkpoint_every", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("keep_checkpoints", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("optimizer.learning_rate", lambda v: _is_number(v) and v > 0 and math.isfinite(v),
     "a finite number > 0"),
    ("optimizer.momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.weight_decay", lambda v: _is_number(v) and 0 <= v < math.inf,
     "a finite number >= 0"),
    ("optimizer.grad_clip_norm", lambda v: _is_number(v) and 0 <= v < math.inf,
     "a finite number >= 0 (0: off)"),
    ("optimizer.b1", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.b2", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("schedule.gamma", lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    ("schedule.power", lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    ("schedule.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("schedule.decay", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("data.image_size", lambda v: v is None or (isinstance(v, int) and v >= 1),
     "an integer >= 1 (or None: from the data)"),
    ("data.num_threads", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("data.num_workers", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("data.source_sampling", lambda v: v in ("per_domain", "pooled"), "'per_domain' or 'pooled'"),
    ("data.domains_per_step", lambda v: isinstance(v, int) and v >= 0,
     "an integer >= 0 (0: every labelled domain in every step)"),
    ("model.feature_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.bottleneck_dim", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("model.bottleneck_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.head_hidden", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("model.head_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.aux_loss_weight", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("data.source_fraction", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("data.source_subset_seed", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("validation.max_examples", lambda v: isinstance(v, int) and v >= 2,
     "an integer >= 2 (the validators compare examples)"),
    ("validation.validators",
     lambda v: isinstance(v, (tuple, list)) and set(v) <= set(validators_lib.VALIDATORS),
     f"a tuple of validator names, of {', '.join(sorted(validators_lib.VALIDATORS))}"),
    ("model.output_activation", lambda v: v in ("", "sigmoid"), "'' or 'sigmoid'"),
    ("label_kind", lambda v: v in ("", "classification", "regression"),
     "'classification', 'regression' or '' (the domains' kind)"),
    ("regression_loss", lambda v: v in ("l1", "l2"), "'l2' (mean squared error) or 'l1'"),
)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
          f"an integer >= {low}")


def _positive(v: Any) -> bool:
  return _is_number(v) and 0 < v < math.inf

# Method fields checked wherever they appear (also inside composed terms);
# besides these, every number of a config must be finite.
_METHOD_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("trade_off", lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    *((name, lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0")
      for name in ("trade_off_im", "trade_off_backbone", "trade_off_head", "trade_off_entropy",
                   "trade_off_balance", "beta")),
    ("trade_off_warmup", *_int_at_least(0)),
    ("pretrain_steps", *_int_at_least(0)),
    ("min_class_count", *_int_at_least(0)),
    *((name, *_int_at_least(1)) for name in (
        "clustering_rounds", "k", "num_k", "kernel_num", "order", "randomized_dim",
        "head_width", "attention_steps", "grl_max_steps", "num_source_classes")),
    ("hidden_sizes", lambda v: isinstance(v, (tuple, list)) and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in v),
     "a tuple of integers >= 1 (the hidden layers' widths)"),
    ("threshold", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("ema_decay", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("head_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    *((name, _positive, "a finite number > 0") for name in (
        "pretrain_lr_scale", "temperature", "attention_temperature", "kernel_mul", "margin",
        "softmax_sigma", "attention_lr", "epsilon")),
)


def _get(config: ml_collections.ConfigDict, dotted: str) -> tuple[bool, Any]:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ValueError` naming the fields the config lacks, or the first
  field whose value is out of range."""
  missing = [field for field in REQUIRED_FIELDS if not _get(config, field)[0]]
  if missing:
    raise ValueError(f"the config lacks {', '.join(missing)}: configs/default.py defines every "
                     "field with its default; start the config from its get_config() (as "
                     "configs/<method>.py do), or add the fields")
  _check_finite(config, "config")
  for field, ok, what in _RULES:
    present, value = _get(config, field)
    if present and not ok(value):
      raise ValueError(f"config.{field}={value!r} is invalid: it must be {what}")
  _, method = _get(config, "method")
  if isinstance(method, (ml_collections.ConfigDict, dict)):
    _validate_method(method, "config.method")
    _check_pretraining_ends(method, config.total_steps, "config.method")
  _check_init_paths(config)
  built = None
  if isinstance(method, (ml_collections.ConfigDict, dict)):
    # The method's own checks (its name, its fields, its `__post_init__`) and
    # whether it needs a trained start, before any data is read: building it
    # costs nothing. The class count stands in (no check reads it).
    built = methods.create_method(method, num_classes=2)
  check_trained_start(config, built)


def _check_finite(node: Any, where: str) -> None:
  """NaN or an infinity in any field: no field means either."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for key, value in node.items():
      _check_finite(value, f"{where}.{key}")
  elif isinstance(node, (tuple, list)):
    for value in node:
      _check_finite(value, where)
  elif isinstance(node, float) and not math.isfinite(node):
    raise ValueError(f"{where}={node!r} is invalid: it must be a finite number")


def _check_pretraining_ends(method, total_steps: Any, where: str) -> None:
  """A pre-training phase as long as the run leaves the method's terms at 0 throughout."""
  for key, value in method.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      _check_pretraining_ends(value, total_steps, f"{where}.{key}")
    elif key == "pretrain_steps" and value and isinstance(total_steps, int) and (
        total_steps <= value):
      raise ValueError(
          f"config.total_steps={total_steps} ends the run within {where}.pretrain_steps="
          f"{value}: the method's adaptation would never start; raise --config.total_steps "
          f"above {value}, or lower {where.removeprefix('config.')}.pretrain_steps")


def _check_init_paths(config: ml_collections.ConfigDict) -> None:
  """`model.init` (and a feature extractor's checkpoint or workdir) exist."""
  what = ("a checkpoint file (.safetensors, .npz, .pth, ...) or a tljax run's workdir "
          "(its latest checkpoint)")
  for field in ("model.init", "features.init", "features.workdir"):
    present, path = _get(config, field)
    if not present or not path or "://" in str(path):
      continue  # unset, or on a remote filesystem (read when loaded)
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.{field}={path!r} does not exist: pass {what}")
    if os.path.isdir(path) and not workdir_lib.is_workdir(path):
      raise ValueError(f"config.{field}={path!r} is a directory but not a tljax run's workdir "
                       f"(it has no config.json and checkpoints/): pass {what}")


def _validate_method(method, where: str) -> None:
  for key, value in method.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      _validate_method(value, f"{where}.{key}")
      continue
    for field, ok, what in _METHOD_RULES:
      if key == field and not ok(value):
        raise ValueError(f"{where}.{key}={value!r} is invalid: it must be {what}")


def check_trained_start(config: ml_collections.ConfigDict, method: Any = None) -> None:
  """Refuses a run without `model.init` whose config (`model.init_required`)
  or method (`Method.trained_start_reason`, when given) needs a trained model
  to start from."""
  # `config.features`: only the configs of heads on cached features have it.
  if config.model.init or config.get("features") is not None:
    return
  reason = method.trained_start_reason() if method is not None else ""
  if reason:
    who, escape = f"method {config.method.name!r} ({reason})", ""
  elif config.model.init_required:
    who = "this config"
    escape = (" (or --config.model.init_required=False to train from a random start on "
              "purpose)")
  else:
    return
  recipe = config.model.init_recipe or (
      "set --config.model.init to the workdir of a run trained on the source, e.g. one of "
      "configs/source_only.py")
  raise ValueError(f"config.model.init is empty, but {who} starts from a trained model, and "
                   f"would adapt a randomly initialised network instead. {recipe}{escape}")


def check_batch_fits(config: ml_collections.ConfigDict, domains: Any, method: Any) -> None:
  """Refuses a batch larger than a training split the method reads (it would
  hold every example several times, and can exhaust memory), unless
  `data.allow_repeats_in_batch` allows it."""
  if config.data.allow_repeats_in_batch:
    return
  splits = []
  if "source" in method.inputs:
    # `batch_size` examples of each labelled domain, or of their union ('pooled').
    per_domain = (len(domains.source_trains) > 1
                  and config.data.source_sampling == "per_domain")
    splits += [("source_split", s) for s in
               (domains.source_trains if per_domain else [domains.source_train])]
  if "target" in method.inputs and domains.target_train is not None:
    splits.append(("target_split", domains.target_train))
  splits += [(f"method's {key!r} domain", train) for key, (train, _) in
             sorted(domains.extra.items())]
  for field, split in splits:
    if config.batch_size > len(split):
      name = f"{getattr(split, 'name', '?')}:{getattr(split, 'split', '?')}"
      raise ValueError(
          f"config.batch_size={config.batch_size} is larger than config.{field} "
          f"({name}, {len(split)} examples); use a batch of at most "
          f"{len(split)}, or a larger split, or --config.data.allow_repeats_in_batch=True to "
          "repeat examples within a batch on purpose")


def check_resume_step(config: ml_collections.ConfigDict, step: int, workdir: str) -> None:
  """Refuses a `total_steps` below the step of the checkpoint being resumed."""
  if step > config.total_steps:
    raise ValueError(
        f"config.total_steps={config.total_steps} is below the step of the checkpoint in "
        f"{workdir!r} ({step}): a run cannot be shortened after the fact; pass "
        f"--config.total_steps={step} (or more) to resume it, or a new --workdir")


def check_workdir(workdir: str) -> None:
  """The workdir exists (or can be made) and is writable."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} is a file, not a directory; pass a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
        f"cannot write to --workdir={workdir!r} ({e.strerror or e}); pass a directory "
        "you can write to") from e
