"""Parameter groups (as data) -> optax optimizers, and learning-rate schedules.

`config.param_groups` is a tuple of `(regex, group)` over '/'-joined parameter
paths such as `classifier/backbone/layer1_0/conv1/kernel`; the first regex that
matches (`re.fullmatch`) decides, and every parameter must be matched. A group
is

  * `'frozen'`: the parameter never moves. It is left out of differentiation
    altogether (see `tljax.methods.base.StepContext.update`), holds no
    optimizer state, and a module all of whose parameters are frozen uses its
    BatchNorm running statistics in training (`frozen_norm_regex`);
  * a number: a learning-rate multiplier (TLlib's fine-tuning default is
    `(('classifier/backbone/.*', 0.1), ('.*', 1.0))`);
  * a dict overriding the optimizer for that group: `lr_mult`, `momentum`,
    `weight_decay`, `nesterov` (SGD), `b1`, `b2` (Adam), e.g. TLlib's AFN
    recipe, a backbone without momentum:
    `(('classifier/backbone/.*', {'momentum': 0.0}), ('.*', 1.0))`.

`config.optimizer.no_decay` lists regexes of parameters that get no weight
decay (e.g. `('.*/bias', '.*/scale')`, biases and normalisation scales, as
big_vision and the flax examples exclude them; TLlib decays everything).

A method may keep several optimizers (`Method.optimizers`); each is built
here over the parameters it trains, with the same groups and schedule.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.traverse_util
import jax
import ml_collections
import optax

FROZEN = "frozen"
# Per-group optimizer settings a group dict may override.
GROUP_KEYS = ("lr_mult", "momentum", "weight_decay", "nesterov", "b1", "b2")


def _normalise_group(i: int, group: Any) -> Any:
  if group is None or group == FROZEN:
    return FROZEN
  if isinstance(group, (int, float)) and not isinstance(group, bool):
    if group < 0:
      raise ValueError(f"config.param_groups[{i}]: learning-rate multiplier {group!r} must be "
                       ">= 0")
    return (("lr_mult", float(group)),)
  if isinstance(group, Mapping):
    unknown = sorted(set(group) - set(GROUP_KEYS))
    if unknown:
      raise ValueError(f"config.param_groups[{i}]: unknown group settings {unknown}; a group "
                       f"dict may set {list(GROUP_KEYS)}")
    for key in ("lr_mult", "momentum", "weight_decay"):
      if key in group and (not isinstance(group[key], (int, float)) or group[key] < 0):
        raise ValueError(f"config.param_groups[{i}]: {key}={group[key]!r} must be a number >= 0")
    return tuple(sorted(group.items()))
  raise ValueError(f"config.param_groups[{i}]: group {group!r} must be 'frozen', a "
                   "learning-rate multiplier, or a dict of settings "
                   f"({', '.join(GROUP_KEYS)})")


def normalise_groups(param_groups: Sequence[Any]) -> list[tuple[str, Any]]:
  """`(regex, group)` pairs checked, groups as 'frozen' or a sorted settings tuple."""
  groups = []
  if isinstance(param_groups, str) or not isinstance(param_groups, (tuple, list)):
    raise ValueError(f"config.param_groups={param_groups!r} must be a tuple of "
                     "(regex, group) pairs")
  for i, entry in enumerate(param_groups):
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise ValueError(f"config.param_groups[{i}] = {entry!r}: each entry must be a "
                       "(regex, group) pair, group 'frozen', a learning-rate multiplier or a dict")
    pattern, group = entry
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f"config.param_groups[{i}]: bad regex {pattern!r}: {e}") from e
    groups.append((pattern, _normalise_group(i, group)))
  return groups


def group_of_each_param(params: Any, param_groups: Sequence[Any]) -> dict[tuple[str, ...], Any]:
  """`{path tuple: group}` for every parameter ('frozen' or a settings tuple).

  Raises:
    ValueError: naming the parameters that no regex matches.
  """
  groups = normalise_groups(param_groups)
  assignment, uncovered = {}, []
  for path in flax.traverse_util.flatten_dict(params):
    name = "/".join(path)
    for pattern, group in groups:
      if re.fullmatch(pattern, name):
        assignment[path] = group
        break
    else:
      uncovered.append(name)
  if uncovered:
    shown = ", ".join(uncovered[:10]) + (f" ... ({len(uncovered)} in all)" if len(uncovered) > 10 else "")
    raise ValueError(f"config.param_groups covers no group for: {shown}. Add a final "
                     "catch-all entry such as ('.*', 1.0) or ('.*', 'frozen').")
  return assignment


def frozen_mask(params: Any, param_groups: Sequence[Any]) -> dict[tuple[str, ...], bool]:
  return {p: g == FROZEN for p, g in group_of_each_param(params, param_groups).items()}


def frozen_norm_regex(params: Any, param_groups: Sequence[Any], prefix: str = "") -> str:
  """Regex of the module paths (below `prefix`) all of whose parameters are frozen.

  Passed to a network as `frozen_norm`, so frozen BatchNorm layers normalise
  with their running statistics even in training (and never update them).
  """
  modules: dict[str, bool] = {}
  for path, group in group_of_each_param(params, param_groups).items():
    module = "/".join(path[:-1])
    if prefix:
      if not module.startswith(prefix + "/"):
        continue
      module = module[len(prefix) + 1:]
    modules[module] = modules.get(module, True) and group == FROZEN
  frozen = sorted(m for m, all_frozen in modules.items() if all_frozen)
  return "|".join(re.escape(m) for m in frozen)


def create_schedule(config: ml_collections.ConfigDict,
                    total_steps: int | None = None) -> optax.Schedule:
  """The base learning-rate schedule (group multipliers are applied on top).

  `config.schedule.name`:
    'inverse': TLlib's `lr * (1 + gamma * step) ** (-power)`.
    'constant', 'cosine' (to 0 at `total_steps`, default `config.total_steps`:
    TLlib's `CosineAnnealingLR`), 'step' (x`decay` at `boundaries`).
  Optional linear warm-up over `config.schedule.warmup_steps`.
  """
  lr = config.optimizer.learning_rate
  sched = config.schedule
  name = sched.name
  total_steps = config.total_steps if total_steps is None else total_steps
  if name == "inverse":
    gamma, power = sched.gamma, sched.power
    schedule = lambda step: lr * (1.0 + gamma * step) ** (-power)
  elif name == "constant":
    schedule = optax.constant_schedule(lr)
  elif name == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(total_steps - sched.warmup_steps, 1))
  elif name == "step":
    schedule = optax.piecewise_constant_schedule(
        lr, {int(b): sched.decay for b in sched.boundaries})
  else:
    raise ValueError(f"unknown config.schedule.name {name!r}; choose inverse, constant, cosine or step")
  if sched.warmup_steps:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, sched.warmup_steps), schedule], [sched.warmup_steps])
  return schedule


def _base_optimizer(opt: Mapping[str, Any], schedule: optax.Schedule,
                    decay: bool) -> optax.GradientTransformation:
  weight_decay = opt["weight_decay"] if decay else 0.0
  name = opt["name"]
  if name == "sgd":
    # Coupled L2 (added to the gradient before momentum), as torch.optim.SGD.
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.sgd(schedule, momentum=opt["momentum"] or None, nesterov=bool(opt["nesterov"])))
  if name == "adam":
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.adam(schedule, b1=opt["b1"], b2=opt["b2"]))
  if name == "adamw":
    return optax.adamw(schedule, b1=opt["b1"], b2=opt["b2"], weight_decay=weight_decay)
  raise ValueError(f"unknown config.optimizer.name {name!r}; choose sgd, adam or adamw")


def create_optimizer(config: ml_collections.ConfigDict, params: Any, *,
                     schedule: optax.Schedule | None = None,
                     lr_scale: float = 1.0) -> optax.GradientTransformation:
  """An `optax.partition` over the parameter groups of the (trainable) `params`.

  Args:
    config: the run's config (`optimizer`, `schedule`, `param_groups`).
    params: the parameters this optimizer updates (frozen ones excluded),
      nested as in the train state.
    schedule: the base schedule (default: `create_schedule(config)`).
    lr_scale: a factor on the learning rate of every group.
  """
  schedule = schedule or create_schedule(config)
  assignment = group_of_each_param(params, config.param_groups)
  no_decay = [re.compile(p) for p in config.optimizer.no_decay]
  base = {"name": config.optimizer.name, "momentum": config.optimizer.momentum,
          "nesterov": config.optimizer.nesterov, "weight_decay": config.optimizer.weight_decay,
          "b1": config.optimizer.b1, "b2": config.optimizer.b2, "lr_mult": 1.0}
  labels, transforms = {}, {}
  for path, group in assignment.items():
    if group == FROZEN:
      raise ValueError(f"create_optimizer got the frozen parameter {'/'.join(path)}")
    decay = not any(p.fullmatch("/".join(path)) for p in no_decay)
    label = repr((group, decay))
    labels[path] = label
    if label not in transforms:
      settings = {**base, **dict(group)}
      multiplier = settings["lr_mult"] * lr_scale
      transforms[label] = _base_optimizer(
          settings, lambda step, m=multiplier: m * schedule(step), decay)
  tx = optax.partition(transforms, flax.traverse_util.unflatten_dict(labels))
  clip = config.optimizer.grad_clip_norm
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx


def describe_groups(params: Any, param_groups: Sequence[Any]) -> dict[str, int]:
  """Parameter count per group, for the log."""
  counts: dict[str, int] = {}
  flat = flax.traverse_util.flatten_dict(params)
  for path, group in group_of_each_param(params, param_groups).items():
    label = FROZEN if group == FROZEN else ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in group)
    counts[label] = counts.get(label, 0) + int(jax.numpy.size(flat[path]))
  return counts
