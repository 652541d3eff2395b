"""Checks of a run's config and workdir before anything is written.

Every numeric field a run reads is checked here, so that a bad value is one
line naming the field and the fix (`python -m tljax.main` prints it as
`error: ...`), never a traceback from deep inside the step or a silently
wrong run (a negative learning rate ascends the loss).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import ml_collections


class NonFiniteError(FloatingPointError):
  """A step's loss, gradient norm or another metric is NaN or infinite."""


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# (field, predicate, what it must be). Fields absent from a config are skipped.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
     "an integer >= 0"),
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
    ("model.bottleneck_dim", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("model.bottleneck_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.head_hidden", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("model.head_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.output_activation", lambda v: v in ("", "sigmoid"), "'' or 'sigmoid'"),
    ("label_kind", lambda v: v in ("", "classification", "regression"),
     "'classification', 'regression' or '' (the domains' kind)"),
    ("regression_loss", lambda v: v in ("l1", "l2"), "'l2' (mean squared error) or 'l1'"),
)

# Method fields checked wherever they appear (also inside composed terms).
_METHOD_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("trade_off", lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    ("trade_off_warmup", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("pretrain_steps", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
)


def _get(config: ml_collections.ConfigDict, dotted: str) -> tuple[bool, Any]:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ValueError` naming the first field whose value is out of range."""
  for field, ok, what in _RULES:
    present, value = _get(config, field)
    if present and not ok(value):
      raise ValueError(f"config.{field}={value!r} is invalid: it must be {what}")
  _, method = _get(config, "method")
  if isinstance(method, (ml_collections.ConfigDict, dict)):
    _validate_method(method, "config.method")


def _validate_method(method, where: str) -> None:
  for key, value in method.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      _validate_method(value, f"{where}.{key}")
      continue
    for field, ok, what in _METHOD_RULES:
      if key == field and not ok(value):
        raise ValueError(f"{where}.{key}={value!r} is invalid: it must be {what}")


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
