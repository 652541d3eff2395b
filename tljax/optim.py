"""Parameter groups (as data) -> an optax optimizer, and learning-rate schedules.

`config.param_groups` is a list of `(regex, group)` over '/'-joined parameter
paths such as `backbone/layer1_0/conv1/kernel`; the first regex that matches
(`re.fullmatch`) decides, every parameter must be matched, and a group is either
`'frozen'` or a learning-rate multiplier. TLlib's fine-tuning default, backbone
at 0.1x and everything else at 1x, is `[('backbone/.*', 0.1), ('.*', 1.0)]`.

Frozen parameters get `optax.set_to_zero()` through `optax.partition`, so they
never move and hold no optimizer state; their BatchNorm layers keep running
statistics (see `frozen_norm_regex`).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

FROZEN = "frozen"


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _normalise_groups(param_groups: Sequence[Any]) -> list[tuple[str, Any]]:
  groups = []
  for i, entry in enumerate(param_groups):
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise ValueError(f"config.param_groups[{i}] = {entry!r}: each entry must be a "
                       "(regex, group) pair, group 'frozen' or a learning-rate multiplier")
    pattern, group = entry
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config.param_groups[{i}]: bad regex {pattern!r}: {e}") from e
    if group is None or group == FROZEN:
      group = FROZEN
    elif isinstance(group, (int, float)) and not isinstance(group, bool) and group >= 0:
      group = float(group)
    else:
      raise ValueError(f"config.param_groups[{i}]: group {group!r} must be 'frozen' "
                       "or a non-negative learning-rate multiplier")
    groups.append((pattern, group))
  return groups


def group_of_each_param(params: Any, param_groups: Sequence[Any]) -> Any:
  """A tree like `params` holding each parameter's group ('frozen' or a multiplier).

  Raises:
    ValueError: naming the parameters that no regex matches.
  """
  groups = _normalise_groups(param_groups)
  uncovered = []

  def assign(path, _):
    name = path_str(path)
    for pattern, group in groups:
      if re.fullmatch(pattern, name):
        return group
    uncovered.append(name)
    return None

  assignment = jax.tree_util.tree_map_with_path(assign, params)
  if uncovered:
    shown = ", ".join(uncovered[:10]) + (f" ... ({len(uncovered)} in all)" if len(uncovered) > 10 else "")
    raise ValueError(f"config.param_groups covers no group for: {shown}. Add a final "
                     "catch-all entry such as ('.*', 1.0) or ('.*', 'frozen').")
  return assignment


def _label(group) -> str:
  return FROZEN if group == FROZEN else f"lr_x{group:g}"


def frozen_norm_regex(params: Any, param_groups: Sequence[Any]) -> str:
  """Regex of the module paths all of whose parameters are frozen.

  Passed to the model as `frozen_norm`, so frozen BatchNorm layers normalise
  with their running statistics even in training (and never update them).
  """
  assignment = group_of_each_param(params, param_groups)
  modules: dict[str, bool] = {}
  for path, group in jax.tree_util.tree_flatten_with_path(assignment)[0]:
    module = path_str(path[:-1])
    modules[module] = modules.get(module, True) and group == FROZEN
  frozen = sorted(m for m, all_frozen in modules.items() if all_frozen)
  return "|".join(re.escape(m) for m in frozen)


def create_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The base learning-rate schedule (group multipliers are applied on top).

  `config.schedule.name`:
    'inverse': TLlib's `lr * (1 + gamma * step) ** (-power)` (gamma 1e-3, power 0.75).
    'constant', 'cosine' (to 0 at total_steps), 'step' (x`decay` at `boundaries`).
  Optional linear warm-up over `config.schedule.warmup_steps`.
  """
  lr = config.optimizer.learning_rate
  sched = config.schedule
  name = sched.name
  if name == "inverse":
    gamma, power = sched.gamma, sched.power
    schedule = lambda step: lr * (1.0 + gamma * step) ** (-power)
  elif name == "constant":
    schedule = optax.constant_schedule(lr)
  elif name == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(config.total_steps - sched.get("warmup_steps", 0), 1))
  elif name == "step":
    schedule = optax.piecewise_constant_schedule(
        lr, {int(b): sched.get("decay", 0.1) for b in sched.get("boundaries", ())})
  else:
    raise ValueError(f"unknown config.schedule.name {name!r}; choose inverse, constant, cosine or step")
  warmup = sched.get("warmup_steps", 0)
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def _base_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  if opt.name == "sgd":
    # Coupled L2 (added to the gradient before momentum), as torch.optim.SGD.
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay) if opt.weight_decay else optax.identity(),
        optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  if opt.name == "adam":
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay) if opt.weight_decay else optax.identity(),
        optax.adam(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999)))
  if opt.name == "adamw":
    return optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                       weight_decay=opt.weight_decay)
  raise ValueError(f"unknown config.optimizer.name {opt.name!r}; choose sgd, adam or adamw")


def create_optimizer(config: ml_collections.ConfigDict, params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`optax.partition` over the parameter groups of `config.param_groups`.

  Returns:
    The transformation and the base schedule (for logging the learning rate).
  """
  schedule = create_schedule(config)
  assignment = group_of_each_param(params, config.param_groups)
  groups = set(jax.tree.leaves(assignment))
  transforms = {}
  for group in groups:
    if group == FROZEN:
      transforms[_label(group)] = optax.set_to_zero()
    else:
      transforms[_label(group)] = _base_optimizer(
          config, lambda step, m=group: m * schedule(step))
  labels = jax.tree.map(_label, assignment)
  tx = optax.partition(transforms, labels)
  clip = config.optimizer.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule


def describe_groups(params: Any, param_groups: Sequence[Any]) -> dict[str, int]:
  """Parameter count per group label, for the log."""
  assignment = group_of_each_param(params, param_groups)
  counts: dict[str, int] = {}
  for group, leaf in zip(jax.tree.leaves(assignment), jax.tree.leaves(params)):
    counts[_label(group)] = counts.get(_label(group), 0) + int(jnp.size(leaf))
  return counts
