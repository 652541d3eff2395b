"""Training and evaluation: the one path every tljax run takes.

`train_and_evaluate(config, workdir)` reads top to bottom in phases, each a
short function: `_open_run` (config checks, mesh), `open_data` (the task:
its domains, label space and views, `tljax.data.task`), `build`
(mesh-replicated state, the method's step context, the jitted steps),
`_claim_workdir` (lock and run identity: nothing, the feature cache included,
is written before the config, data and model are known good), `_restore` (the latest
checkpoint that restores, with the validators' records saved beside it),
`_write_identity` (run.json and config.json, once the restore succeeded),
`_train` (the loop: steps, evaluations with validators, checkpoints,
preemption) and `_write_results`.

The train step is the method's own (`tljax/methods`):

    state, metrics = method.train_step(ctx, state, batch, rng)

jitted with the state donated, parameters replicated and batches sharded over a
`('data',)` mesh of all devices (all processes in a multi-host run); the
compiler inserts the collectives, so BatchNorm statistics and every loss see the
global batch. `rng = fold_in(state.rng, state.step)`, and the data of step `s`
is a pure function of the seed and `s` (see `data/pipeline.py`), so a run
resumed from a checkpoint continues exactly as if never interrupted. A step
whose metrics are not all finite leaves the state unchanged, and the host stops
the run with a message naming them.
"""

from __future__ import annotations

import bisect
import collections
import copy
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import signal
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import tljax
from tljax import config_checks
from tljax import evaluation
from tljax import features as features_lib
from tljax import models, optim
from tljax import workdir as workdir_lib
from tljax.data import open_domain, pipeline, preprocess, registry, views
from tljax.data import task as task_lib
from tljax.methods import base as methods_base
from tljax.methods import create_method
from tljax.methods.base import TrainState
from tljax.models import checkpoints

NonFiniteError = config_checks.NonFiniteError

# The checkpoint's items: the train state (orbax's default item, so that
# checkpoints written before the second item existed read alike) and what the
# run decides from besides it, as JSON.
STATE_ITEM, RUN_STATE_ITEM = "default", "run_state"


# ----------------------------------------------------------------------------
# The jitted steps (pure).
# ----------------------------------------------------------------------------


def guarded_step(state: TrainState, batch: dict, *, method, ctx) -> tuple[TrainState, dict]:
  """The method's step, its key derived from the step, and the non-finite guard."""
  rng = jax.random.fold_in(state.rng, state.step)
  new_state, metrics = method.train_step(ctx, state, batch, rng)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
  # A non-finite step leaves the state as it was; the host stops the run.
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  # A method with phases logs the rate its current optimizer applies.
  metrics = {"learning_rate": ctx.schedule(state.step), **metrics, "finite": finite}
  return new_state.replace(step=state.step + 1), metrics


def seed_batching(choice: str, platform: str) -> str:
  """How the step of several seeds runs (`config.seed_batching`): `'vmap'`
  batches every op over the seeds, which fills an accelerator; on CPU
  (`'auto'`: `'unroll'`) XLA turns a convolution whose kernel has a seed axis
  into a grouped convolution 2-2.5x slower than the seeds' separate
  convolutions (the digits CNN's DANN step, 5 seeds), so there each seed's
  step is its own copy of the program, one program for all."""
  if choice not in config_checks.SEED_BATCHING:
    raise ValueError(f"config.seed_batching={choice!r}: choose one of "
                     f"{config_checks.SEED_BATCHING}")
  if choice == "auto":
    return "unroll" if platform == "cpu" else "vmap"
  return choice


def over_seeds(step_fn, seeds: int, batching: str):
  """`step_fn(state, batch)` over a leading seed axis of both: `jax.vmap`, or
  (`'unroll'`) one copy of the step per seed, their results stacked."""
  if batching == "vmap":
    return jax.vmap(step_fn)
  if batching != "unroll":
    raise ValueError(f"seed batching {batching!r}: 'vmap' or 'unroll'")

  def unrolled(states, batches):
    return stack_seeds([step_fn(seed_slice(states, k), seed_slice(batches, k))
                        for k in range(seeds)])

  return unrolled


def stack_seeds(trees: Sequence[Any]) -> Any:
  """Pytrees of one structure, one per seed, as one with a leading seed axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def seed_slice(tree: Any, k: int) -> Any:
  """Seed `k`'s part of a pytree stacked by `stack_seeds`."""
  return jax.tree.map(lambda x: x[k], tree)


class PhasedStep:
  """The jitted step, compiled once per phase of `method.phase_boundaries()`
  (each with a context that knows its step range, see `StepContext.before`)
  and per host-side choice `method.step_variant(step, rng)` (`ctx.variant`),
  both picked on the host: `step(state, batch, step=state.step)`. A method
  with neither is one jitted function."""

  def __init__(self, method: methods_base.Method, ctx: methods_base.StepContext, *,
               seeds: int = 0, seed_batching: str = "vmap", **jit_kwargs):
    """`seeds > 0`: the step of that many runs at once (`over_seeds`), each
    leaf of the state and the batch stacked on a leading seed axis; a method's
    host-side variants are then drawn in the step, each seed from its own key."""
    self.method, self.ctx, self.jit_kwargs = method, ctx, jit_kwargs
    self.seeds, self.seed_batching = seeds, seed_batching
    self.boundaries = tuple(sorted({int(b) for b in method.phase_boundaries() if int(b) > 0}))
    self.has_variants = (type(method).step_variant
                         is not methods_base.Method.step_variant)
    if seeds:
      # Each seed draws its own variant: the step draws it (`ctx.variant` None).
      self.has_variants = False
    self._steps: dict[tuple[int, Any], Any] = {}
    self._rng = None  # the run's base key, read once (the step never changes it)

  def phase(self, step: int) -> int:
    return bisect.bisect_right(self.boundaries, step)

  def _function(self, state: TrainState, step: int | None):
    if not self.boundaries and not self.has_variants:
      step = 0
    elif step is None:
      step = int(np.asarray(state.step.addressable_data(0)).reshape(-1)[0])
    phase, variant = self.phase(step), None
    if self.has_variants:
      if self._rng is None:
        # This process's copy of the replicated key (every process draws alike).
        self._rng = state.rng.addressable_data(0).copy()  # the state is donated
      variant = self.method.step_variant(step, self._rng)
    key = (phase, variant)
    if key not in self._steps:
      ctx = self.ctx
      if self.boundaries:
        starts, ends = (0, *self.boundaries), (*self.boundaries, None)
        ctx = dataclasses.replace(ctx, steps=(starts[phase], ends[phase]))
      if variant is not None:
        ctx = dataclasses.replace(ctx, variant=variant)
      step_fn = functools.partial(guarded_step, method=self.method, ctx=ctx)
      if self.seeds:
        step_fn = over_seeds(step_fn, self.seeds, self.seed_batching)
      self._steps[key] = jax.jit(step_fn, **self.jit_kwargs)
    return self._steps[key]

  def lower(self, state: TrainState, batch: dict, step: int | None = None):
    """The `jax.stages.Lowered` step for `step` (the state's, by default)."""
    return self._function(state, step).lower(state, batch)

  def __call__(self, state: TrainState, batch: dict, step: int | None = None):
    """`step`: the state's step counter, when the caller knows it (reading it
    from `state` waits for the step that produced it)."""
    return self._function(state, step)(state, batch)


def _predict(variables: dict, images: jax.Array, *, classifier) -> tuple[jax.Array, jax.Array]:
  return classifier.apply(variables, images, train=False)


def _batch_statistics(variables: dict, images: jax.Array, *, classifier) -> dict:
  """This batch's BatchNorm statistics: a training pass from zeroed running
  averages leaves `(1 - momentum)` times the batch statistics in them."""
  zeroed = {**variables, "batch_stats": jax.tree.map(jnp.zeros_like, variables["batch_stats"])}
  _, updates = classifier.apply(zeroed, images, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(0)})
  return updates["batch_stats"]


# ----------------------------------------------------------------------------
# Building the state and the steps.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `build` makes from a config: the method, its context, state and jitted steps."""

  method: methods_base.Method
  ctx: methods_base.StepContext
  state: TrainState
  frozen_norm: str
  train_step: PhasedStep  # (state, batch[, step]) -> (state, metrics); donates state
  predict: Any  # jitted: (classifier variables, images) -> (features, logits)
  batch_statistics: Any  # jitted: (classifier variables, images) -> scaled batch stats
  # jitted: (state variables, features, logits, threshold) -> labels, unknown included
  predict_labels: Any = None
  source_of_init: str = ""
  # seed -> the state a run of that seed starts from (`state` is `config.seed`'s).
  fresh_state: Callable[[int], TrainState] | None = None


def _assemble(classifier_vars: dict, network_vars: Mapping[str, dict]) -> tuple[dict, dict]:
  """Owner-nested `params` and other collections from per-owner variables."""
  classifier_vars = flax.core.unfreeze(classifier_vars)
  collections_ = sorted(set(classifier_vars) | {c for v in network_vars.values() for c in v})
  out = {c: {} for c in collections_}
  for c in collections_:
    if c in classifier_vars:
      out[c]["classifier"] = classifier_vars[c]
    method = {name: flax.core.unfreeze(v[c]) for name, v in network_vars.items() if c in v}
    if method:
      out[c]["method"] = method
  params = out.pop("params", {})
  return params, out


# Compiler options for programs that run once per run (the initialisers):
# at its default optimisation level XLA's CPU backend spends most of a short
# run's start compiling the initialisers (threefry bits and a truncated normal
# for every parameter), 5-17 s for the embedded CNN, a ResNet-18 or a
# ViT-Tiny; level 2 compiles them 1.5-6 times faster into the same bits
# (`tests/test_train.py` compares them for the CNN and a discriminator; the
# ResNet-18 and ViT-Tiny initialisers gave the same bits too when measured).
ONCE_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 2}}


def compile_once(fn, *args, platform: str):
  """The jitted `fn` compiled for `args` with `ONCE_COMPILER_OPTIONS[platform]`."""
  options = ONCE_COMPILER_OPTIONS.get(platform)
  if not options:
    return fn
  return fn.lower(*args).compile(compiler_options=options)


def run_once(fn, *args, platform: str):
  """Calls the jitted `fn` on `args`, compiled with `ONCE_COMPILER_OPTIONS[platform]`."""
  return compile_once(fn, *args, platform=platform)(*args)


def build(config: ml_collections.ConfigDict, num_classes: int, mesh: jax.sharding.Mesh,
          input_shape: tuple[int, ...] | None = None, *,
          num_target_examples: int = 0, labels: task_lib.LabelSpace | None = None,
          num_source_domains: int = 1, has_target: bool = True) -> Setup:
  """Initialises the train state (replicated over `mesh`) and jits the steps.

  Args:
    config: the run's config.
    num_classes: outputs of the model's head (`labels.num_outputs`).
    mesh: the `('data',)` mesh.
    input_shape: one example's input shape (default: square RGB images of
      `config.data.image_size`).
    num_target_examples: size of the target training split (for methods that
      keep per-example state).
    labels: the task's label space (default: a closed-set classification of
      `num_classes` classes).
    num_source_domains: labelled domains in each batch.
    has_target: whether the task has an unlabelled target domain.
  """
  replicated = NamedSharding(mesh, P())
  if labels is None:
    labels = task_lib.LabelSpace(task_lib.CLASSIFICATION,
                                 tuple(str(c) for c in range(num_classes)))
  method = create_method(config.method, num_classes=num_classes)
  sampling = config.data.source_sampling
  method.check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                    source_sampling=sampling if num_source_domains > 1 else "per_domain")
  if config.model.output_activation and labels.kind != task_lib.REGRESSION:
    raise ValueError(f"config.model.output_activation={config.model.output_activation!r} bounds "
                     f"regression outputs, and this task is {labels.kind} ({labels.describe()}); "
                     "set --config.model.output_activation=''")
  for names in (method.source_views, method.target_views):
    view_preprocessing(config, names, None)  # a missing view's config fails here, before writing
  per_step = domains_per_step(config, num_source_domains)
  # With per-domain sampling each domain in a step gives `batch_size` examples.
  domain_batch_size = config.batch_size if (sampling == "per_domain"
                                            or num_source_domains == 1) else None
  task_fields = dict(labels=labels, num_source_domains=num_source_domains,
                     regression_loss=config.regression_loss,
                     domain_batch_size=domain_batch_size, domains_per_step=per_step)
  if input_shape is None:
    input_shape = (config.data.image_size, config.data.image_size, 3)

  def init_variables(classifier, networks, rng):
    cls_rng, method_rng, dropout_rng = jax.random.split(rng, 3)
    images = jnp.zeros((2, *input_shape), jnp.float32)
    cls_vars = classifier.init({"params": cls_rng, "dropout": dropout_rng}, images, train=False)
    features, logits = classifier.apply(cls_vars, images, train=False)
    outputs = methods_base.DomainOutputs(features, features, logits, logits,
                                         jnp.zeros((2,), jnp.int32))
    probe_ctx = methods_base.StepContext(classifier, networks, {}, {}, None, num_classes,
                                         num_target_examples, **task_fields)
    network_vars = method.init_networks(probe_ctx, method_rng, cls_vars, outputs)
    return _assemble(cls_vars, network_vars)

  # Parameter shapes first, to learn what the groups freeze.
  probe = models.create_classifier(config.model, num_classes,
                                   num_source_domains=num_source_domains)
  param_shapes, _ = jax.eval_shape(
      functools.partial(init_variables, probe, method.networks(num_classes, probe)),
      jax.random.PRNGKey(0))
  frozen = optim.frozen_mask(param_shapes, config.param_groups)
  frozen_norm = optim.frozen_norm_regex(param_shapes, config.param_groups, prefix="classifier")
  # BatchNorm layers kept in evaluation mode while their parameters train
  # (TLlib's DG `--freeze-bn`), beside those whose parameters are frozen.
  frozen_norm = "|".join(r for r in (frozen_norm, config.model.eval_mode_norm) if r)
  classifier = models.create_classifier(config.model, num_classes, frozen_norm=frozen_norm,
                                        num_source_domains=num_source_domains)
  networks = method.networks(num_classes, classifier)
  specs = method.optimizers()
  trainable = methods_base.trainable_masks(param_shapes, specs, frozen)
  schedule = optim.create_schedule(config)
  optimizers, schedules = {}, {}
  for name, mask in trainable.items():
    schedules[name] = schedule
    if specs[name].start:
      # An optimizer that starts part-way spans its schedule over the steps left.
      schedules[name] = optim.create_schedule(
          config, total_steps=max(config.total_steps - specs[name].start, 1))
    optimizers[name] = optim.create_optimizer(config, methods_base.select(param_shapes, mask),
                                              schedule=schedules[name],
                                              lr_scale=specs[name].lr_scale)
  if config.model.aux_loss_weight:
    _check_sows_aux_logits(probe, input_shape, config.model.name)
  ctx = methods_base.StepContext(classifier, networks, optimizers, trainable, schedule,
                                 num_classes, num_target_examples, optimizer_schedules=schedules,
                                 aux_loss_weight=config.model.aux_loss_weight, **task_fields)

  def init_state(rng, params, model_state):
    variables = {"params": params, **model_state}
    opt_state = {name: tx.init(methods_base.select(params, trainable[name]))
                 for name, tx in optimizers.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=opt_state, method_state=method.init_method_state(ctx, variables),
                      rng=rng)

  # The initialisers, compiled once for every seed the process starts.
  init_compiled, source_of_init = None, ""

  def fresh_state(seed: int) -> TrainState:
    nonlocal init_compiled, source_of_init
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    with jax.set_mesh(mesh):
      if init_compiled is None:
        init_compiled = compile_once(
            jax.jit(functools.partial(init_variables, classifier, networks),
                    out_shardings=replicated), init_rng, platform=mesh.devices.flat[0].platform)
      params, model_state = init_compiled(init_rng)
    if config.model.init:
      params, model_state, source_of_init = _load_pretrained(params, model_state, config)
      # The method's networks may take their part of the same checkpoint.
      loaded = dict(method.init_from_checkpoint({"params": params, **model_state},
                                                config.model.init, backbone=config.model.name))
      params, model_state = jax.device_put((loaded.pop("params"), loaded), replicated)
    if config.model.dtype == "float64":
      # Layers create float32 parameters; a float64 run keeps all state in float64.
      params, model_state = jax.tree.map(
          lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
          (params, model_state))
    with jax.set_mesh(mesh):
      return jax.jit(init_state, out_shardings=replicated)(train_rng, params, model_state)

  state = fresh_state(config.seed)
  step_fn = PhasedStep(method, ctx, donate_argnums=(0,), out_shardings=(replicated, replicated))
  predict_fn = jax.jit(functools.partial(_predict, classifier=classifier),
                       out_shardings=replicated)
  statistics_fn = jax.jit(functools.partial(_batch_statistics, classifier=classifier),
                          out_shardings=replicated)
  predict_labels_fn = jax.jit(functools.partial(method.predict_labels, ctx))
  return Setup(method=method, ctx=ctx, state=state, frozen_norm=frozen_norm, train_step=step_fn,
               predict=predict_fn, batch_statistics=statistics_fn,
               predict_labels=predict_labels_fn, source_of_init=source_of_init,
               fresh_state=fresh_state)


def _check_sows_aux_logits(classifier, input_shape: tuple[int, ...], backbone: str) -> None:
  """Refuses `config.model.aux_loss_weight > 0` for a classifier whose training
  pass sows no `aux_logits` (before anything is written; shapes only)."""
  def sown(images):
    variables = classifier.init({"params": jax.random.PRNGKey(0)}, images, train=False)
    _, updates = classifier.apply(variables, images, train=True, mutable=True,
                                  rngs={"dropout": jax.random.PRNGKey(0)})
    return updates.get("intermediates", {})

  images = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  names = {path[-1] for path in flax.traverse_util.flatten_dict(jax.eval_shape(sown, images))}
  if "aux_logits" not in names:
    raise ValueError(f"config.model.aux_loss_weight > 0 trains an auxiliary classifier, and the "
                     f"{backbone} backbone has none in training: build one with "
                     "--config.model.backbone_kwargs.aux_logits=True (Inception-v3) or set "
                     "--config.model.aux_loss_weight=0")


def _load_pretrained(params: dict, model_state: dict, config) -> tuple[dict, dict, str]:
  """Merges `config.model.init` (a checkpoint file or a tljax workdir) into the
  classifier's variables, honouring `config.model.dont_load`."""
  variables = methods_base.owned({"params": params, **model_state}, methods_base.CLASSIFIER)
  host = jax.device_get(variables)
  loaded = checkpoints.load(host, config.model.init, backbone=config.model.name,
                            dont_load=tuple(config.model.dont_load))
  sharding = jax.tree.leaves(params)[0].sharding
  loaded = jax.device_put(loaded, sharding)
  merged = methods_base.with_owned({"params": params, **model_state}, methods_base.CLASSIFIER,
                                   loaded)
  source = config.model.init
  if workdir_lib.is_workdir(config.model.init):
    source = workdir_lib.classifier_variables(config.model.init)[1]
  logging.info("Classifier initialised from %s (kept fresh: %s).", source,
               ", ".join(config.model.dont_load) or "nothing")
  merged = dict(merged)
  return merged.pop("params"), merged, source


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Domains:
  """The splits a run reads, built from the config by `open_data` (the task
  contract, `tljax.data.task`).

  Attributes:
    source_train: the labelled training examples of every labelled domain,
      pooled; each example carries its domain's position (`domain`).
    target_train: the unlabelled training examples (their labels never reach
      the step); None without a target (domain generalisation).
    source_eval: the labelled domains' evaluation splits, pooled.
    target_eval: the target's evaluation split (labels in `labels.eval_names`:
      target-private classes are `labels.unknown_label`); None without a target.
    source_val: held-out labelled data for the source-based validators
      (training-domain validation); None when `config.source_val_split` is
      empty or the domains have no held-out part.
    labels: the label space (classes or factors, setting).
    input_shape: one example's input shape.
    source_trains: each labelled domain's training examples (per-domain sampling).
    tests: held-out domains (`config.test_domains`), by name: read only by the
      final evaluation.
    extra: a method's `extra_domains`: `{key: (training split, evaluation split)}`.
    unsaved_features: feature extractions not yet in the feature cache; the
      trainer writes them once it holds the workdir's lock.
  """

  source_train: Any
  target_train: Any
  source_eval: Any
  target_eval: Any
  source_val: Any
  labels: task_lib.LabelSpace
  input_shape: tuple[int, ...]
  source_trains: tuple[Any, ...] = ()
  tests: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  extra: Mapping[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
  unsaved_features: Sequence[features_lib.CacheEntry] = ()

  @property
  def num_classes(self) -> int:
    """Outputs of the model's head (`labels.num_outputs`)."""
    return self.labels.num_outputs

  @property
  def num_source_domains(self) -> int:
    return max(len(self.source_trains), 1)


def domain_names(value: str) -> tuple[str, ...]:
  """The domains a config field names: one, or several separated by commas."""
  return tuple(name.strip() for name in str(value or "").split(",") if name.strip())


def _open_eval_split(name: str, split: str, train_split: str, field: str, open_kwargs) -> Any:
  """The evaluation split, or the training split of a domain that has no other
  split (transductive evaluation, as TLlib on Office-31), with a log line."""
  only = _only_split_instead(name, split, open_kwargs)
  if only is not None:
    logging.warning("%s has only the %r split: evaluating on %r (transductive); set config.%s "
                    "to choose a part of it.", name, only, train_split, field)
    split = train_split
  return open_domain(name, split, **open_kwargs)


def _only_split_instead(name: str, split: str, open_kwargs) -> str | None:
  """The domain's one split when `split` names another (a folder or list has
  only 'train'); None when `split` exists or the domain has several."""
  splits = registry.available_splits(name, data_dir=open_kwargs["data_dir"],
                                     manual_dir=open_kwargs["manual_dir"],
                                     skip_corrupt=open_kwargs["skip_corrupt"])
  wanted = split.split("[")[0].split("+")[0]
  return splits[0] if wanted not in splits and len(splits) == 1 else None


@dataclasses.dataclass
class _Raw:
  """The splits of one domain as opened, before the task's views."""

  name: str
  train: Any = None
  eval: Any = None
  val: Any = None


def _open_raw(config: ml_collections.ConfigDict, open_kwargs: dict) -> tuple[
    list[_Raw], _Raw | None, list[_Raw]]:
  """Opens the labelled, unlabelled and held-out domains' splits."""
  sources, targets = domain_names(config.source), domain_names(config.target)
  tests = domain_names(config.test_domains)
  if not sources:
    raise ValueError("config.source names no domain: give the labelled domain(s), e.g. "
                     "--config.source=digits (several: --config.source=synth_digits,digits)")
  if len(targets) > 1:
    raise ValueError(f"config.target={config.target!r} names {len(targets)} domains; a run "
                     "adapts to one target: name the others in config.test_domains to "
                     "evaluate on them, or launch one run per target")
  overlap = sorted((set(sources) | set(targets)) & set(tests))
  if overlap:
    raise ValueError(f"config.test_domains names {overlap}, which the run also trains on; "
                     "held-out domains must be apart from config.source and config.target")
  if jax.process_count() > 1:
    # Process 0 builds missing datasets first; the others then only read them.
    if jax.process_index() == 0:
      for name in (*sources, *targets, *tests):
        registry.available_splits(name, data_dir=open_kwargs["data_dir"],
                                  manual_dir=open_kwargs["manual_dir"],
                                  skip_corrupt=open_kwargs["skip_corrupt"])
    multihost_utils.sync_global_devices("tljax: datasets built")
  labelled = []
  for name in sources:
    raw = _Raw(name, train=open_domain(name, config.source_split, **open_kwargs))
    raw.eval = _open_eval_split(name, config.eval_source_split, config.source_split,
                                "eval_source_split", open_kwargs)
    if config.source_val_split == config.eval_source_split:
      raw.val = raw.eval
    elif config.source_val_split and not config.data.holdout_fraction:
      only = _only_split_instead(name, config.source_val_split, open_kwargs)
      if only is not None:
        # Held-out source data does not exist; validating on training data would
        # flatter the source-based validators, so they are left out.
        logging.warning("%s has only the %r split: no held-out source data, so the validators "
                        "that need it are skipped; set config.data.holdout_fraction (e.g. 0.2) "
                        "or config.source_val_split to a part of it (e.g. 'train[90%%:]', with "
                        "source_split='train[:90%%]').", name, only)
      else:
        raw.val = open_domain(name, config.source_val_split, **open_kwargs)
    labelled.append(raw)
  target = None
  if targets:
    target = _Raw(targets[0], train=open_domain(targets[0], config.target_split, **open_kwargs))
    target.eval = _open_eval_split(targets[0], config.eval_target_split, config.target_split,
                                   "eval_target_split", open_kwargs)
  held_out = [_Raw(name, eval=_open_eval_split(name, config.eval_target_split, "train",
                                               "eval_target_split", open_kwargs))
              for name in tests]
  return labelled, target, held_out


def _each(raws: Sequence[_Raw], fn) -> None:
  """Applies `fn` to every split of `raws`, keeping splits that are one object one."""
  for raw in raws:
    done = {}
    for field in ("train", "eval", "val"):
      split = getattr(raw, field)
      if split is not None:
        if id(split) not in done:
          done[id(split)] = fn(split)
        setattr(raw, field, done[id(split)])


def _label_space(config, labelled: list[_Raw], target: _Raw | None,
                 held_out: list[_Raw]) -> tuple[task_lib.LabelSpace, tuple[int, ...],
                                                Mapping[str, tuple[int, ...]]]:
  """The label space, the labelled domains' kept classes, and the kept
  classes of each unlabelled or held-out domain (dataset indices)."""
  first = labelled[0].train
  kinds = {raw.train.label_kind for raw in labelled}
  kinds |= {raw.eval.label_kind for raw in ([target] if target else []) + held_out}
  if len(kinds) > 1:
    raise ValueError(f"the domains mix classification and regression labels ({config.source} "
                     f"-> {config.target or config.test_domains}); a run has one kind of label")
  declared = config.label_kind
  if declared and declared != first.label_kind:
    what = (f"factors {', '.join(first.factor_names)}" if first.factor_names
            else f"{first.num_classes} classes")
    raise ValueError(f"config.label_kind={declared!r}: this config is for {declared} tasks, and "
                     f"{first.name} is a {first.label_kind} domain ({what}); run a "
                     f"{first.label_kind} task's config (configs/default.py: TASKS) or set "
                     f"--config.label_kind={first.label_kind}")
  preset = task_lib.preset(config.data.label_sets) if config.data.label_sets else None
  if preset is not None:
    preset.check(config.data.label_sets, first.class_names, first.name)
  if first.label_kind == task_lib.REGRESSION:
    if preset or config.data.source_classes or config.data.target_classes or (
        config.setting not in ("", "closed_set")):
      raise ValueError("class selections and label-set settings apply to classification; "
                       f"{first.name} is a regression domain (factors {', '.join(first.factor_names)})")
    for raw in labelled[1:] + ([target] if target else []) + held_out:
      split = raw.train or raw.eval
      if split.factor_names != first.factor_names:
        raise ValueError(f"{raw.name} predicts {split.factor_names}, {first.name} "
                         f"{first.factor_names}: the domains must share their factors")
    return task_lib.LabelSpace(task_lib.REGRESSION, first.factor_names), (), {}
  setting = config.setting or (preset.setting if preset else "closed_set")
  if preset and config.setting and config.setting != preset.setting:
    raise ValueError(f"config.data.label_sets={config.data.label_sets!r} is a {preset.setting} "
                     f"protocol, but config.setting={config.setting!r}: drop one of them")
  source_spec = config.data.source_classes or (
      preset.source(first.class_names) if preset and preset.source else "")
  keep = task_lib.select_classes(source_spec, first.class_names, field="config.data.source_classes")
  names = tuple(first.class_names[i] for i in keep)
  for raw in labelled[1:]:
    if raw.train.class_names != first.class_names:
      raise ValueError(f"labelled domains {first.name} and {raw.name} have different classes; "
                       "several labelled domains must share one label space")
  others = {}
  for raw in ([target] if target else []) + held_out:
    classes = (raw.train or raw.eval).class_names
    spec = config.data.target_classes or (
        preset.target(first.class_names) if preset and preset.target else "")
    others[raw.name] = task_lib.select_classes(spec, classes, field="config.data.target_classes")
  if target is not None:
    target_classes = target.train.class_names
    labels = task_lib.label_space(names, [target_classes[i] for i in others[target.name]],
                                  setting=setting, source=config.source, target=config.target)
  else:
    labels = task_lib.label_space(names, None, setting=setting, source=config.source,
                                  target=config.test_domains)
  for raw in held_out:
    classes = raw.eval.class_names
    unknown = [classes[i] for i in others[raw.name] if classes[i] not in names]
    if unknown and not labels.has_unknown:
      raise ValueError(f"held-out domain {raw.name} has classes the labelled domains lack "
                       f"({_short(unknown)}); select its classes with data.target_classes or "
                       "declare --config.setting=open_set")
  return labels, keep, others


def _short(names: Sequence[str]) -> str:
  return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def open_data(config: ml_collections.ConfigDict, workdir: str) -> Domains:
  """Opens the domains `config` names and applies the task's views: class
  selections and the unknown label (`config.setting`, `config.data.label_sets`,
  `data.source_classes` / `data.target_classes`), the semi-supervised split
  (`data.labels_per_class`), training-domain hold-outs (`data.holdout_fraction`),
  label maps and label budgets, and (for heads on frozen features) the
  features, read from the cache under `workdir` (or `config.features.cache_dir`);
  new extractions are returned unsaved (`Domains.unsaved_features`): this
  writes nothing.

  Raises:
    ValueError: domains that contradict the declared setting or each other, a
      class selection that names nothing, and the errors of `open_domain`.
  """
  open_kwargs = dict(data_dir=config.data_dir, manual_dir=config.manual_dir,
                     cache=config.data.cache, skip_corrupt=config.data.skip_corrupt)
  labelled, target, held_out = _open_raw(config, open_kwargs)
  every = labelled + ([target] if target else []) + held_out
  unsaved = []
  # `config.features` exists only in the configs of heads on cached features
  # (configs/linear_probe.py): its presence is what selects them.
  if config.get("features") is not None:
    # Heads on cached features: every split becomes feature vectors of a frozen network.
    extractor = features_lib.create_extractor(config.features)
    cache_dir = config.features.cache_dir or os.path.join(workdir, "feature_cache")
    _each(every, lambda d: features_lib.feature_domain(extractor, d, cache_dir, unsaved=unsaved,
                                                       num_threads=config.data.num_threads))
  # Views (after the feature cache, which keeps the dataset's own labels).
  label_map = config.data.label_map
  if label_map:
    _each(every, lambda d: views.map_labels(d, label_map))
  labels, keep, others = _label_space(config, labelled, target, held_out)
  if labels.kind == task_lib.CLASSIFICATION:
    if len(keep) < labelled[0].train.num_classes:
      _each(labelled, lambda d: task_lib.restrict_classes(d, keep))
    for raw in ([target] if target else []) + held_out:
      kept = others[raw.name]
      table = task_lib.target_table(raw.eval.class_names, labels)
      _each([raw], lambda d: task_lib.restrict_classes(d, kept, table, labels.eval_names))
  per_class = config.data.labels_per_class
  if per_class:
    # Semi-supervised: N labels per class; the rest of the same split is the
    # unlabelled data when the target names that split.
    if len(labelled) != 1:
      raise ValueError("config.data.labels_per_class takes one labelled domain")
    raw = labelled[0]
    raw.train, rest = task_lib.split_labelled(raw.train, per_class,
                                              config.data.source_subset_seed)
    if target is not None and (target.name, config.target_split) == (raw.name,
                                                                      config.source_split):
      target.train = rest
  if config.data.holdout_fraction:
    for i, raw in enumerate(labelled):
      raw.train, raw.val = task_lib.holdout(raw.train, config.data.holdout_fraction,
                                            config.data.holdout_seed + i)
  fraction = config.data.source_fraction
  for raw in labelled:
    raw.train = views.stratified_subset(raw.train, fraction, config.data.source_subset_seed)
  source_name = ",".join(raw.name for raw in labelled)
  source_trains = tuple(raw.train for raw in labelled)
  source_train = task_lib.pooled([raw.train for raw in labelled], source_name)
  source_eval = task_lib.pooled([raw.eval for raw in labelled], source_name)
  vals = [raw.val for raw in labelled]
  source_val = None
  if all(v is not None for v in vals):
    same = all(raw.val is raw.eval for raw in labelled)
    source_val = source_eval if same else task_lib.pooled(vals, source_name)
  if label_map or fraction != 1 or per_class:
    logging.info("Labels: %s; labelled training examples: %d.", label_map or "the dataset's",
                 len(source_train))
  target_train = target.train if target else None
  logging.info("Labelled %s:%s (%d), unlabelled %s (labels unused)%s; %s.", source_name,
               config.source_split, len(source_train),
               f"{target.name}:{target_train.split} ({len(target_train)})" if target else "none",
               f"; held out: {', '.join(r.name for r in held_out)}" if held_out else "",
               labels.describe())
  # One example's shape, from the split every method reads (source-free
  # methods never read the source training split).
  example = (target_train or source_train).source[0]
  input_shape = preprocess.from_config(config.data.eval_preprocess, config.data.image_size)(
      example, np.random.default_rng(0))["image"].shape
  return Domains(source_train, target_train, source_eval, target.eval if target else None,
                 source_val, labels, tuple(input_shape), source_trains=source_trains,
                 tests={raw.name: raw.eval for raw in held_out}, unsaved_features=tuple(unsaved))


def _open_extra_domains(config: ml_collections.ConfigDict, domains: Domains,
                        method: methods_base.Method) -> Domains:
  """Opens the labelled datasets the method reads besides source and target."""
  specs = method.extra_domains()
  if not specs:
    return domains
  open_kwargs = dict(data_dir=config.data_dir, manual_dir=config.manual_dir,
                     cache=config.data.cache, skip_corrupt=config.data.skip_corrupt)
  extra = {}
  for key, spec in specs.items():
    train_split, eval_split = (views.map_labels(open_domain(spec.dataset, split, **open_kwargs),
                                                spec.label_map)
                               for split in (spec.split, spec.eval_split))
    if train_split.num_classes != spec.num_classes:
      raise ValueError(f"{key!r} reads {spec.dataset} (label map {spec.label_map}), which has "
                       f"{train_split.num_classes} classes, but its config says "
                       f"num_classes={spec.num_classes}")
    logging.info("%s: %s:%s (%d labelled), evaluated on %s.", key, spec.dataset, spec.split,
                 len(train_split), eval_split.split)
    extra[key] = (train_split, eval_split)
  return dataclasses.replace(domains, extra=extra)


def _device_batches(batches: Iterator[dict], sharding: NamedSharding,
                    size: int = 2) -> Iterator[dict]:
  """Assembles global arrays from process-local (nested) batches, `size` ahead."""
  queue = collections.deque()

  def put(batch):
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _source_stream(config, domains: Domains, preprocess_fn, **kwargs) -> Iterator[dict]:
  """The labelled batches: `batch_size` examples of each labelled domain
  (`data.source_sampling='per_domain'`; of `data.domains_per_step` of them,
  drawn anew every step, when set), or of their union ('pooled'), each
  example with its domain's position under `domain`. Across processes, a
  multi-domain batch is not ordered by domain: group by `domain`."""
  def tagged(batches, index):
    for batch in batches:
      batch["domain"] = np.full(len(batch["label"]), index, np.int32)
      yield batch

  sampling = config.data.source_sampling
  if len(domains.source_trains) <= 1 or sampling == "pooled":
    batches = pipeline.train_batches(domains.source_train, preprocess=preprocess_fn,
                                     seed=2 * config.seed, **kwargs)
    return batches if len(domains.source_trains) > 1 else tagged(batches, 0)
  # Domain 0 draws as a single-source run would; the others apart from it and
  # from the target's and extra domains' seeds.
  seeds = [2 * config.seed + 2**24 * i for i in range(len(domains.source_trains))]
  per_step = domains_per_step(config, len(domains.source_trains))
  if per_step < len(domains.source_trains):
    return pipeline.domain_subset_batches(
        domains.source_trains, batch_size_per_domain=kwargs.pop("global_batch_size"),
        domains_per_step=per_step, preprocess=preprocess_fn, seeds=seeds,
        choice_seed=2 * config.seed + 2**23, **kwargs)
  streams = [tagged(pipeline.train_batches(d, preprocess=preprocess_fn, seed=seed, **kwargs), i)
             for i, (d, seed) in enumerate(zip(domains.source_trains, seeds))]
  return ({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
          for parts in zip(*streams))


def domains_per_step(config, num_source_domains: int) -> int:
  """Labelled domains in each step's batch: `config.data.domains_per_step`
  of them with per-domain sampling (0: all), else all (pooled)."""
  chosen = config.data.domains_per_step
  if config.data.source_sampling != "per_domain" or not chosen:
    return num_source_domains
  if not 0 < chosen <= num_source_domains:
    raise ValueError(f"config.data.domains_per_step={chosen} must be in 1..{num_source_domains} "
                     f"(config.source names {num_source_domains} labelled domains), or 0 for all")
  return chosen


def view_preprocessing(config, view_names: Sequence[str], train_pp):
  """The preprocessing of a training example read as `image` (`train_pp`)
  plus the views `view_names`: `image_<v>` is `config.data.<v>_preprocess`
  (e.g. `image_strong`, `config.data.strong_preprocess`). Without views, `train_pp`.

  Raises:
    ValueError: a view whose preprocessing the config does not set.
  """
  if not view_names:
    return train_pp
  views = {"image": train_pp}
  for view in view_names:
    field = f"{view[len('image_'):]}_preprocess"
    if not view.startswith("image_") or field not in config.data:
      raise ValueError(f"the method reads the view {view!r} of each example, and "
                       f"config.data.{field} is not set; set it (e.g. "
                       f"--config.data.{field}.name=digits_strong)")
    views[view] = preprocess.from_config(config.data[field], config.data.image_size)
  return preprocess.multi_view(views)


def train_batches(config, domains: Domains, method, first_step: int,
                  sharding: NamedSharding) -> Iterator[dict]:
  """`host_train_batches` as global arrays sharded by `sharding`."""
  return _device_batches(host_train_batches(config, domains, method, first_step), sharding)


def host_train_batches(config, domains: Domains, method, first_step: int) -> Iterator[dict]:
  """`{'source': ..., 'target': ...}` batches of the domains the method reads,
  from step `first_step` on: this process's part of each global batch, as
  numpy arrays.

  `source` holds `image`, `label`, `index` (the example's position in its
  domain's split) and `domain`, plus the views in `method.source_views`;
  `target` the same without `label` (target labels never reach the step), plus
  the views in `method.target_views`."""
  kwargs = dict(global_batch_size=config.batch_size, start_step=first_step,
                process_index=jax.process_index(), process_count=jax.process_count(),
                num_threads=config.data.num_threads, num_workers=config.data.num_workers)
  train_pp = preprocess.from_config(config.data.train_preprocess, config.data.image_size)
  streams = {}
  if "source" in method.inputs:
    source_pp = view_preprocessing(config, method.source_views, train_pp)
    streams["source"] = _source_stream(config, domains, source_pp, **kwargs)
  if "target" in method.inputs:
    target_pp = view_preprocessing(config, method.target_views, train_pp)
    streams["target"] = pipeline.train_batches(domains.target_train, preprocess=target_pp,
                                               seed=2 * config.seed + 1, **kwargs)
  for i, (key, (train_split, _)) in enumerate(sorted(domains.extra.items())):
    # Data seeds apart from the source's and target's (2 seed, 2 seed + 1).
    streams[key] = pipeline.train_batches(train_split, preprocess=train_pp,
                                          seed=2**20 * (i + 1) + config.seed, **kwargs)

  def zipped():
    names = list(streams)
    for parts in zip(*streams.values()):
      batch = dict(zip(names, parts))
      if "target" in batch:  # target labels never reach the step
        batch["target"] = {k: v for k, v in batch["target"].items() if k != "label"}
      yield batch

  return zipped()


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def eval_batches(config: ml_collections.ConfigDict, domain,
                 sharding: NamedSharding) -> Iterator[dict]:
  """Every example of `domain` once, in order, in padded global batches of
  `config.eval_batch_size` with a `mask` of the real examples, placed on `sharding`."""
  batches = pipeline.eval_batches(
      domain, global_batch_size=config.eval_batch_size,
      preprocess=preprocess.from_config(config.data.eval_preprocess, config.data.image_size),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, num_workers=config.data.num_workers)
  return _device_batches(({k: v for k, v in b.items() if k != "index"} for b in batches),
                         sharding)


def recompute_batch_statistics(setup: Setup, variables: dict, domain, config,
                               sharding: NamedSharding) -> dict:
  """`variables` with BatchNorm statistics averaged over `domain` (AdaBN): the
  mean of the per-batch statistics over its full evaluation batches (a
  trailing partial batch is left out unless it is the only one). The variances
  are the layers' own: unbiased per batch, as PyTorch's running averages."""
  if "batch_stats" not in variables:
    return variables
  momentum = 0.9  # tljax's BatchNorm layers: running = 0.9 running + 0.1 batch
  total, batches = None, 0
  n = len(domain)
  for i, batch in enumerate(eval_batches(config, domain, sharding)):
    if (i + 1) * config.eval_batch_size > n and batches:
      break
    stats = setup.batch_statistics(variables, batch["image"])
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    batches += 1
  mean = jax.tree.map(lambda s: s / (batches * (1 - momentum)), total)
  return {**variables, "batch_stats": mean}


def predict_all(setup: Setup, variables: dict, domain, config,
                sharding: NamedSharding) -> evaluation.Predictions:
  """Features, logits and labels of every example of `domain`, in order."""
  return evaluation.predictions(setup.predict, variables, eval_batches(config, domain, sharding))


# ----------------------------------------------------------------------------
# Host-side helpers.
# ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
  """The versions of the packages a run's numbers depend on, and its backend."""
  return {"tljax": tljax.__version__, "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          **{name: importlib.metadata.version(name)
             for name in ("orbax-checkpoint", "grain", "tensorflow-datasets")},
          "numpy": np.__version__, "python": platform.python_version(),
          "backend": jax.default_backend(), "devices": str(jax.device_count())}


def open_writer(workdir: str, resume_step: int):
  """The run's metric writer (`tljax.writers.create`): TensorBoard events and
  metrics.jsonl on process 0, nothing elsewhere."""
  # Imported when a run starts writing, not with this module: clu's writers load
  # TensorFlow (seconds), which a run that stops on bad input never needs.
  from tljax import writers  # pylint: disable=g-import-not-at-top
  return writers.create(workdir, resume_step)


def open_progress_report(total_steps: int, every_steps: int, writers: Sequence[Any]):
  """clu's steps/s and ETA report, through `writers` (`tljax.writers.progress_report`)."""
  from tljax import writers as writers_lib  # pylint: disable=g-import-not-at-top  (as above)
  return writers_lib.progress_report(total_steps, every_steps, writers)


class _StopRequest:
  """SIGTERM (preemption) or SIGINT (Ctrl-C) -> save a checkpoint at the next step, exit."""

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  def install(self):
    if getattr(signal.getsignal(signal.SIGINT), "received", False):
      # A Ctrl-C during start-up that did not stop it (`tljax.main._StartUpInterrupt`).
      raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGINT):
      # Multi-process runs use jax's preemption sync point for SIGTERM.
      if sig == signal.SIGTERM and jax.process_count() > 1:
        continue
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook's worker)
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.signal = signum

  def uninstall(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


class _MetricMeans:
  """The means of the step metrics since the last log line."""

  def __init__(self):
    self.sums = collections.defaultdict(float)
    self.steps = 0

  def add(self, metrics: Mapping[str, Any]) -> None:
    for k, v in metrics.items():
      if k != "finite":
        self.sums[k] += float(v)
    self.steps += 1

  def pop(self) -> dict[str, float]:
    means = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
    self.sums.clear()
    self.steps = 0
    return means


# ----------------------------------------------------------------------------
# The phases of train_and_evaluate.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """What the phases share."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  replicated: NamedSharding
  batch_sharding: NamedSharding
  lock: workdir_lib.WorkdirLock | None
  start_time: float
  # The changes to the run's config a resume was allowed: this resume's
  # (`{'field', 'from', 'to'}`) until `_write_identity`, then every resume's
  # (with `step`), as run.json keeps them.
  allowed_changes: list[dict[str, Any]]
  # Where this process's wall time went, in seconds (results.json's `time_s`).
  time_s: dict[str, float] = dataclasses.field(default_factory=dict)


def _run_id() -> str:
  """Identifies this run across its processes: process 0's host and pid."""
  own = np.frombuffer(f"{platform.node()}:{os.getpid()}".encode().ljust(128, b" ")[:128],
                      np.uint8)
  if jax.process_count() > 1:
    own = np.asarray(multihost_utils.broadcast_one_to_all(own))
  return bytes(own).decode().strip()


def _open_run(config: ml_collections.ConfigDict, workdir: str, devices) -> Run:
  """Checks the config and the workdir path, and makes the mesh. Writes nothing."""
  start_time = time.time()
  config_checks.validate(config)
  devices = list(devices) if devices is not None else jax.devices()
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % len(devices):
      raise ValueError(f"config.{name}={config[name]} must be divisible by the number of "
                       f"devices ({len(devices)})")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} is a file, not a directory; pass a directory")
  logging.info("tljax %s | %s", tljax.__version__, json.dumps(versions()))
  mesh = jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
  logging.info("Mesh: %d devices over %d processes (%s).", len(devices), jax.process_count(),
               jax.default_backend())
  return Run(config, workdir, mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")),
             None, start_time, [])


def _claim_workdir(run: Run, allow_changes: Sequence[str]) -> None:
  """Once the config, data and model are known good: takes the workdir's lock
  and checks the run identity against a run already there (writing nothing
  but the lock: `_write_identity` writes once the checkpoint has restored)."""
  is_main = jax.process_index() == 0
  config_checks.check_workdir(run.workdir)
  run_id = _run_id()  # a collective: every process takes part
  refusal = None
  if is_main:
    try:
      run.lock = workdir_lib.WorkdirLock(run.workdir, run_id).acquire()
    except workdir_lib.WorkdirInUseError as e:
      refusal = e
  if jax.process_count() > 1:
    # The other processes learn whether process 0 got the lock, and stop with it.
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
    if refused and refusal is None:
      refusal = workdir_lib.WorkdirInUseError(
          f"process 0 could not take the lock of {run.workdir} (see its log)")
  if refusal is not None:
    raise refusal
  try:
    run.allowed_changes = workdir_lib.check_run_identity(run.workdir, run.config,
                                                         allow_changes=allow_changes)
  except BaseException:
    if run.lock is not None:
      run.lock.release()
    raise


def _write_identity(run: Run, step: int) -> None:
  """run.json (with the changes this resume was allowed, at `step`) and config.json."""
  if jax.process_index() > 0:
    return
  run.allowed_changes = workdir_lib.write_run_identity(
      run.workdir, run.config, changes=run.allowed_changes, step=step)
  path = os.path.join(run.workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(run.config.to_json_best_effort(indent=2))
  os.replace(path + ".tmp", path)


def _restore(run: Run, setup: Setup) -> tuple[TrainState, evaluation.Selection]:
  """The latest checkpoint that restores and the validators' records saved
  with it, or the fresh state and no records."""
  manager = _checkpoint_manager(run)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=run.replicated), setup.state)

  def restore(step):
    if not (manager.directory / str(step) / RUN_STATE_ITEM).exists():
      # Written before the run state was saved with the train state.
      return manager.restore(step, args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.StandardRestore(abstract)}))[STATE_ITEM], None
    restored = manager.restore(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(abstract),
           RUN_STATE_ITEM: ocp.args.JsonRestore()}))
    run_state = restored[RUN_STATE_ITEM]
    workdir_lib.verify_checksums(restored[STATE_ITEM], run_state["checksums"],
                                 f"the checkpoint of step {step}")
    return restored[STATE_ITEM], run_state

  try:
    restored, step = workdir_lib.restore_latest(
        manager, restore, move_aside_dir=os.path.join(run.workdir, "unreadable_checkpoints"),
        is_main=jax.process_index() == 0)
  finally:
    manager.close()
  if restored is None:
    return setup.state, evaluation.Selection()
  config_checks.check_resume_step(run.config, step, run.workdir)
  state, run_state = restored
  logging.info("Resumed from the checkpoint of step %d.", step)
  if run_state is None:
    logging.warning("The checkpoint of step %d predates the validators' records saved with "
                    "it; reading them from metrics.jsonl.", step)
    return state, evaluation.Selection.from_metrics(
        os.path.join(run.workdir, "metrics.jsonl"), step)
  return state, evaluation.Selection.from_json(run_state["selection"])


def _save(manager: ocp.CheckpointManager, step: int, state: TrainState,
          selection: evaluation.Selection, *, force: bool = False) -> None:
  """The train state, and beside it the validators' records up to `step` and
  the state's checksums."""
  run_state = {"selection": selection.to_json(), "checksums": workdir_lib.checksums(state)}
  manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                                RUN_STATE_ITEM: ocp.args.JsonSave(run_state)}),
               force=force)


def _checkpoint_manager(run: Run, selection: evaluation.Selection | None = None
                        ) -> ocp.CheckpointManager:
  """The run's checkpoints: the latest `keep_checkpoints`, and every step a
  validator (or the oracle) selects."""
  policy = evaluation.KeepSelected(run.config.keep_checkpoints,
                                   selection or evaluation.Selection())
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(run.workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=True),
      item_names=(STATE_ITEM, RUN_STATE_ITEM))


def _evaluate(run: Run, setup: Setup, domains: Domains, state: TrainState) -> dict:
  """One evaluation: the task's measures on the evaluation splits, and the validators."""
  config = run.config
  labels = domains.labels
  has_target = domains.target_train is not None
  variables = _eval_variables(run, setup, domains, state)
  predict = lambda domain: predict_all(setup, variables, domain, config, run.batch_sharding)
  source = predict(domains.source_eval)
  source_val = None
  if domains.source_val is not None:
    source_val = source if domains.source_val is domains.source_eval else predict(domains.source_val)
  source_report = evaluation.task_report(source, labels)
  record = {evaluation.SOURCE_EVAL: source_report["primary"]}
  named = {"source": source}
  unlabelled = target_report = None
  if has_target:
    target = named["target"] = predict(domains.target_eval)
    same_target = (config.target_split == config.eval_target_split
                   or len(domains.target_train) == len(domains.target_eval) and
                   domains.target_eval.split == domains.target_train.split)
    # The unlabelled split is predicted only for the validators that read it.
    unlabelled = None if not config.validation.validators else (
        target if same_target else predict(domains.target_train))
    target_report = evaluation.task_report(target, labels,
                                           _predicted(setup, state, target, labels, config))
    # The oracle is the task's target measure (accuracy, H-score or MAE), read
    # with target labels: TLlib's model selection, unavailable in practice.
    record.update({evaluation.ORACLE: target_report["primary"],
                   "target_accuracy": target_report.get("accuracy")})
  values = evaluation.validator_values(source_val, unlabelled,
                                       names=tuple(config.validation.validators),
                                       max_examples=config.validation.max_examples,
                                       label_kind=labels.kind)
  # The `source_accuracy` validator (held-out source split) keeps its name; the
  # evaluation split's source measure is reported beside it.
  record = {**values, **record}

  def predict_named(name: str) -> evaluation.Predictions:
    if name not in named:
      named[name] = predict(domains.extra[name][1])
    return named[name]

  method_metrics = setup.method.eval_metrics(setup.ctx, state, predict_named)
  return {"source": source_report, "target": target_report, "record": record,
          "method": {k: float(v) for k, v in method_metrics.items()}}


def _eval_variables(run: Run, setup: Setup, domains: Domains, state: TrainState) -> dict:
  """The classifier variables the method evaluates (AdaBN: BatchNorm statistics
  recomputed over the target training split, or the labelled one without a target)."""
  statistics_domain = domains.target_train if domains.target_train is not None else (
      domains.source_train)
  return setup.method.eval_variables(
      setup.ctx, state,
      lambda v: recompute_batch_statistics(setup, v, statistics_domain, run.config,
                                           run.batch_sharding))


def _predicted(setup: Setup, state: TrainState, pred: evaluation.Predictions, labels,
               config) -> np.ndarray | None:
  """The method's labels of a split that may hold unknown examples (open-set,
  universal), None otherwise."""
  if not labels.has_unknown:
    return None
  return np.asarray(setup.predict_labels(state.variables, jnp.asarray(pred.features),
                                         jnp.asarray(pred.logits),
                                         float(config.unknown_threshold)))


def _evaluate_held_out(run: Run, setup: Setup, domains: Domains, state: TrainState,
                       selection: evaluation.Selection) -> dict[str, Any]:
  """The final evaluation of the held-out domains (`config.test_domains`), the
  only time they are read: with the final parameters (the test-domain oracle
  of DomainBed, which selects no checkpoint) and with each checkpoint a
  validator selected (`source_accuracy` on held-out labelled data is
  DomainBed's training-domain validation)."""
  if not domains.tests:
    return {}
  labels, config = domains.labels, run.config

  def evaluate_at(at_state):
    variables = _eval_variables(run, setup, domains, at_state)
    reports = {}
    for name, domain in domains.tests.items():
      pred = predict_all(setup, variables, domain, config, run.batch_sharding)
      reports[name] = evaluation.task_report(pred, labels,
                                             _predicted(setup, at_state, pred, labels, config))
    primary = float(np.mean([r["primary"] for r in reports.values()]))
    return {"domains": reports, "primary": primary}

  final = evaluate_at(state)
  selected = {}
  picks = {name: pick["step"] for name, pick in selection.report().items()
           if name != evaluation.ORACLE}
  restored = {int(state.step): final}
  for name, step in sorted(picks.items()):
    if step not in restored:
      restored[step] = evaluate_at(_restore_step(run, setup, step))
    selected[name] = {"step": step, **restored[step]}
  logging.info("Held-out %s: %s %.4g with the final parameters%s.", ", ".join(domains.tests),
               labels.primary_metric, final["primary"],
               "".join(f"; {v['primary']:.4g} at step {v['step']} ({k})"
                       for k, v in selected.items()))
  return {"final": final, "selected": selected}


def _restore_step(run: Run, setup: Setup, step: int) -> TrainState:
  """The state of checkpoint `step` (kept because a validator selected it)."""
  manager = _checkpoint_manager(run)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=run.replicated), setup.state)
  try:
    return manager.restore(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(abstract)}))[STATE_ITEM]
  finally:
    manager.close()


def _eval_scalars(result: dict) -> dict[str, float]:
  """The logged numbers of one evaluation: each split's measures but the per-class lists."""
  scalars = {}
  for split in ("source", "target"):
    for key, value in (result[split] or {}).items():
      if isinstance(value, (int, float)) and key not in ("num_examples", "primary"):
        scalars[f"{split}_{key}"] = value
  return scalars


def _refresh(run: Run, setup: Setup, domains: Domains, state: TrainState) -> TrainState:
  labelled = setup.method.refresh_domain == "source"
  domain = domains.source_train if labelled else domains.target_train

  def predict(variables):
    outputs = predict_all(setup, variables, domain, run.config, run.batch_sharding)
    # Target labels are not the method's to read.
    if labelled:
      return outputs.features, outputs.logits, outputs.labels
    return outputs.features, outputs.logits

  return setup.method.refresh(setup.ctx, state, predict)


@dataclasses.dataclass
class SeedRun:
  """One seed's run in the loop (`_train`): its run, data, checkpoint
  selection and writer, and what the loop keeps for it (its checkpoint
  manager, metric means and last evaluation). A run trains one; `tljax.seeds`
  several at once, their states stacked."""

  seed: int
  run: Run
  domains: Domains
  selection: evaluation.Selection | None = None
  writer: Any = None
  log_prefix: str = ""  # "seed <k> " on the log lines of several seeds
  manager: Any = None
  means: _MetricMeans | None = None
  last_eval: dict | None = None


def _train(seeds: Sequence[SeedRun], setup: Setup, state: TrainState, step_fn: Callable,
           batches: Iterator[dict], *, stacked: bool) -> tuple[TrainState, float, int]:
  """The loop: steps, evaluation every `eval_every` (recorded in each seed's
  selection), checkpoints every `checkpoint_every` and at every step a
  validator selects, and a checkpoint before exiting on SIGTERM/SIGINT.

  `stacked`: `state` holds the states of all `seeds` on a leading axis
  (`stack_seeds`) and `step_fn` steps them all (`PhasedStep(seeds=...)`);
  each seed's metrics, evaluations, selection and checkpoints are its own.
  Returns the state, the loop's time after the first step, and the step it
  started from; each seed's last evaluation is in its `last_eval`."""
  config, method = seeds[0].run.config, setup.method
  first_step, total = int(np.asarray(state.step).reshape(-1)[0]), config.total_steps
  domains = seeds[0].domains
  refreshed = domains.target_train if domains.target_train is not None else domains.source_train
  refresh_every = method.refresh_interval(-(-len(refreshed) // config.batch_size))
  own = (lambda tree, k: seed_slice(tree, k)) if stacked else (lambda tree, k: tree)
  for s in seeds:
    s.manager = _checkpoint_manager(s.run, s.selection)
    s.means = _MetricMeans()
  stop = _StopRequest().install()
  progress = open_progress_report(total, config.log_every, [s.writer for s in seeds])
  pending = None  # (step, metrics) of the step dispatched last: read one step late
  train_time, loop_start = 0.0, time.time()
  shared = {"start_up": loop_start - seeds[0].run.start_time, "first_step": 0.0, "refresh": 0.0}
  for s in seeds:  # each seed's share: the shared parts whole, its own evaluations and saves
    s.run.time_s.update(shared)
    for part in ("evaluation", "checkpoints"):
      s.run.time_s.setdefault(part, 0.0)

  def check(step, metrics):
    metrics = jax.device_get(metrics)
    for k, s in enumerate(seeds):
      its = {name: value[k] for name, value in metrics.items()} if stacked else metrics
      if not its["finite"]:
        for other in seeds:
          other.manager.wait_until_finished()
        raise NonFiniteError(_non_finite_message(s, its, step, first_step, several=stacked))
      s.means.add(its)
      _log_train(s.writer, s.means, step, total, config.log_every, s.log_prefix)

  def flush():
    nonlocal pending
    if pending is not None:
      check(*pending)
      pending = None

  try:
    for step in range(first_step + 1, total + 1):
      if refresh_every and (step - 1) % refresh_every == 0:
        flush()
        started = time.time()
        states = [_refresh(s.run, setup, s.domains, own(state, k)) for k, s in enumerate(seeds)]
        state = stack_seeds(states) if stacked else states[0]
        for s in seeds:
          s.run.time_s["refresh"] += time.time() - started
      state, metrics = step_fn(state, next(batches), step - 1)
      if step == first_step + 1:
        jax.block_until_ready(state)
        for s in seeds:
          s.run.time_s["first_step"] = time.time() - loop_start
        logging.info("First step%s (compilation included) took %.1fs.",
                     f" of {len(seeds)} seeds" if stacked else "", time.time() - loop_start)
        loop_start = time.time()
      progress(step)
      flush()
      pending = (step, metrics)
      preempted = stop.signal is not None or (
          jax.process_count() > 1 and seeds[0].manager.reached_preemption(step))
      evaluate = step % config.eval_every == 0 or step == total
      regular = step % config.checkpoint_every == 0 or step == total or preempted
      if evaluate or regular:
        flush()
      for k, s in enumerate(seeds):
        selected = False
        if evaluate:
          started = time.time()
          s.last_eval = _evaluate(s.run, setup, s.domains, own(state, k))
          s.selection.add(step, s.last_eval["record"])
          _log_eval(s.writer, step, s.last_eval, s.domains.labels, s.log_prefix)
          selected = step in s.selection.steps_to_keep()
          s.run.time_s["evaluation"] += time.time() - started
        if regular or selected:
          started = time.time()
          _save(s.manager, step, own(state, k), s.selection, force=preempted)
          s.run.time_s["checkpoints"] += time.time() - started
      if preempted:
        for s in seeds:
          s.manager.wait_until_finished()
        name = signal.Signals(stop.signal).name if stop.signal else "preemption"
        logging.warning("%s: saved the checkpoint%s of step %d; rerun the same command to "
                        "resume.", name, "s of every seed" if stacked else "", step)
        for s in seeds:
          s.writer.close()
        sys.exit(128 + (stop.signal or signal.SIGTERM))
    flush()
    if total > first_step + 1:
      train_time = time.time() - loop_start
  finally:
    stop.uninstall()
    for s in seeds:
      started = time.time()
      s.manager.wait_until_finished()
      s.manager.close()
      s.run.time_s["checkpoints"] += time.time() - started
  for s in seeds:
    s.run.time_s["training_loop"] = train_time
  return state, train_time, first_step


def _non_finite_message(seed: SeedRun, metrics: Mapping[str, Any], step: int, first_step: int,
                        *, several: bool) -> str:
  """What a step whose loss or gradients are not finite stops with."""
  bad = sorted(k for k, v in metrics.items() if k != "finite" and not np.all(np.isfinite(v)))
  shown = ", ".join(f"{k}={float(np.asarray(metrics[k]))}" for k in bad[:4])
  where = f"seed {seed.seed}, step {step}" if several else f"step {step}"
  alone = (" (the other seeds can resume one by one: --config.num_seeds=1 "
           "--config.seed=<k> --workdir=<its seed folder>)" if several else "")
  if first_step and step == first_step + 1:
    # The first step after a resume: the checkpoint, not the settings, is suspect.
    return (f"{where}: {shown} not finite at the first step after resuming from the "
            f"checkpoint of step {first_step} ({seed.manager.directory / str(first_step)}), "
            "which may be damaged; move it into unreadable_checkpoints/ to resume from the one "
            f"before it, or lower config.optimizer.learning_rate if the run diverged there{alone}.")
  return (f"{where}: {shown} not finite; training stopped (latest checkpoint: step "
          f"{seed.manager.latest_step()}). Lower config.optimizer.learning_rate or the method's "
          f"trade_off, or set config.optimizer.grad_clip_norm{alone}.")


def _log_train(writer, means: _MetricMeans, step: int, total: int, log_every: int,
               prefix: str = "") -> None:
  """Every `log_every` steps and at the last: the step metrics' means since
  the last line, written and logged."""
  if step % log_every and step != total:
    return
  scalars = means.pop()
  writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
  shown = [k for k in ("loss", "cls_loss", "transfer_loss") if k in scalars]
  logging.info("%sstep %d/%d | %s", prefix, step, total,
               " | ".join(f"{k} {scalars[k]:.4f}" for k in shown))


def _log_eval(writer, step: int, result: dict, labels: task_lib.LabelSpace,
              prefix: str = "") -> None:
  scalars = _eval_scalars(result)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in {**scalars, **result["method"]}.items()})
  writer.write_scalars(step, {f"validators/{k}": v for k, v in result["record"].items()
                              if v is not None})
  shown = ", ".join(f"{k} {v:.4g}" for k, v in result["record"].items()
                    if k not in evaluation.NOT_VALIDATORS)
  metric = labels.primary_metric
  parts = [f"source {metric} {_shown(result['source']['primary'], metric)}"]
  if result["target"] is not None:
    parts.append(f"target {metric} {_shown(result['target']['primary'], metric)}")
  logging.info("%seval @ %d: %s | %s", prefix, step, ", ".join(parts), shown)


def _shown(value: float | None, metric: str) -> str:
  """A measure as the log shows it: fractions as percentages, errors as they
  are; 'none' for a run that has no such measure (neither a target nor
  held-out domains)."""
  if value is None:
    return "none"
  return f"{value:.4g}" if metric == "mae" else f"{100 * value:.2f}%"


def _primary(domains: Domains, last_eval: dict, held_out: Mapping[str, Any]) -> dict[str, Any]:
  """The one number a run is tabulated by (`sweep collect`): the target's
  measure at the last step, or with held-out domains their mean measure at the
  checkpoint training-domain validation selects (DomainBed's protocol; the
  final parameters where nothing selects)."""
  labels = domains.labels
  if held_out:
    pick = held_out["selected"].get("source_accuracy") or held_out["selected"].get("source_mae")
    value = (pick or held_out["final"])["primary"]
    name, selection = f"test_{labels.primary_metric}", (
        "training-domain validation" if pick else "final step")
  else:
    target = last_eval["target"]
    value = None if target is None else target["primary"]
    name, selection = f"target_{labels.primary_metric}", "final step"
  return {"name": name, "value": value, "higher_is_better": labels.higher_is_better,
          "selection": selection}


def _write_results(run: Run, setup: Setup, domains: Domains, state: TrainState, last_eval: dict,
                   selection: evaluation.Selection, held_out: Mapping[str, Any],
                   train_time: float, first_step: int) -> dict[str, Any]:
  """results.json: the final numbers, the oracle-best step, each validator's
  pick, and the held-out domains' final evaluation."""
  config = run.config
  source, target = last_eval["source"], last_eval["target"] or {}
  labels = domains.labels
  steps_timed = config.total_steps - first_step - 1
  picks = selection.report()
  oracle = picks.pop(evaluation.ORACLE, None)
  results = {
      # The number the task is judged by (accuracy, H-score, MAE; see `primary_metric`).
      "primary_metric": _primary(domains, last_eval, held_out),
      "task": {"kind": labels.kind, "setting": labels.setting, "labels": list(labels.names),
               "target_classes": [labels.names[i] for i in labels.target_classes],
               "source": config.source, "target": config.target or None,
               "test_domains": list(domains.tests)},
      # Final: the last step, what a run without any selection reports.
      "target_accuracy": target.get("accuracy"),
      "source_accuracy": source.get("accuracy"),
      "target_mean_class_accuracy": target.get("mean_class_accuracy"),
      "target_per_class_accuracy": target.get("per_class_accuracy"),
      "source_per_class_accuracy": source.get("per_class_accuracy"),
      # Every measure of the last evaluation (open-set OS / OS* / UNK / H-score,
      # regression errors per factor, ...).
      "target_report": last_eval["target"],
      "source_report": source,
      "target_eval": (f"{config.target}:{domains.target_eval.split}"
                      if domains.target_eval is not None else None),
      "source_eval": f"{config.source}:{domains.source_eval.split}",
      "step": int(state.step),
      # Oracle-best: the evaluation with the best target measure, chosen
      # with target labels (TLlib's protocol; unavailable in practice).
      "oracle_best": oracle,
      # What each unsupervised validator picks, and that step's target measure.
      "selected": picks,
      # Held-out domains, read once at the end: final parameters and each pick.
      "test": held_out or None,
      "validators_final": {k: v for k, v in last_eval["record"].items()
                           if k not in evaluation.NOT_VALIDATORS},
      "validator_rank_correlation": selection.rank_correlations(),
      # The method's own evaluation numbers (`Method.eval_metrics`), last step.
      "method_metrics": last_eval["method"],
      "selected_checkpoints": sorted(selection.steps_to_keep()),
      "method": config.method.name,
      "initialised_from": setup.source_of_init or None,
      "config_changes_allowed_on_resume": run.allowed_changes,
      "train_steps_per_second": steps_timed / train_time if train_time else None,
      "wall_time_s": time.time() - run.start_time,
      # Where this process's time went: start-up (data, model, compilation of
      # the initialisers) until the loop, the first step (its compilation), the
      # loop after it (`training_loop`, steps/s above), and within the loop
      # evaluations (with the validators), checkpoint writes (and the wait for
      # the last) and refreshes; `after_loop`: the wait for the last
      # checkpoint, the held-out domains' evaluation and this file.
      "time_s": {**run.time_s,
                 "after_loop": time.time() - run.start_time - sum(
                     run.time_s.get(k, 0.0) for k in ("start_up", "first_step",
                                                      "training_loop"))},
      "config": config.to_dict(),
      "versions": versions(),
  }
  if jax.process_index() == 0:
    path = os.path.join(run.workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: Sequence[jax.Device] | None = None,
                       allow_changes: Sequence[str] = ()) -> dict[str, Any]:
  """Trains `config.method` on `config.source` (labelled) + `config.target`
  (unlabelled), and evaluates on both.

  Args:
    config: see `configs/default.py`.
    workdir: checkpoints, metrics and `results.json` go here; an existing
      checkpoint there is resumed (with the same config: see
      `tljax.workdir.check_run_identity`).
    devices: devices of the mesh (default: all devices of all processes).
    allow_changes: config fields a resume may change (`('all',)` for any).

  Returns:
    The contents of `results.json`.
  """
  # A copy: the caller's config, references and all, stays as it was.
  config = copy.deepcopy(ml_collections.ConfigDict(config))
  if config.num_seeds != 1:
    raise ValueError(f"config.num_seeds={config.num_seeds}: several seeds train together "
                     "through tljax.seeds.train_and_evaluate (what tljax.main runs)")
  run = _open_run(config, workdir, devices)
  domains = open_data(config, workdir)
  setup = build(config, domains.num_classes, run.mesh, domains.input_shape,
                num_target_examples=len(domains.target_train or ()), labels=domains.labels,
                num_source_domains=domains.num_source_domains,
                has_target=domains.target_train is not None)
  domains = _open_extra_domains(config, domains, setup.method)
  config_checks.check_batch_fits(config, domains, setup.method)
  _claim_workdir(run, allow_changes)
  try:
    features_lib.save(domains.unsaved_features)  # the feature cache, now that the lock is held
    logging.info("Method %s; parameters per group: %s; BatchNorm frozen where: %s",
                 config.method.name,
                 optim.describe_groups(setup.state.params, config.param_groups),
                 setup.frozen_norm or "(none)")
    state, selection = _restore(run, setup)
    selection.oracle_higher_is_better = domains.labels.higher_is_better
    _write_identity(run, int(state.step))
    writer = open_writer(workdir, int(state.step))
    try:
      one = SeedRun(config.seed, run, domains, selection, writer)
      batches = train_batches(config, domains, setup.method, int(state.step), run.batch_sharding)
      state, train_time, first_step = _train([one], setup, state, setup.train_step, batches,
                                             stacked=False)
      last_eval = one.last_eval
      if last_eval is None:  # nothing left to train: the run had already finished
        last_eval = _evaluate(run, setup, domains, state)
      held_out = _evaluate_held_out(run, setup, domains, state, selection)
      results = _write_results(run, setup, domains, state, last_eval, selection, held_out,
                               train_time, first_step)
    finally:
      writer.close()
  finally:
    if run.lock is not None:
      run.lock.release()
  primary = results["primary_metric"]
  logging.info("Done: %s %s (%s), source %s %s (%s in all).", primary["name"],
               _shown(primary["value"], domains.labels.primary_metric), primary["selection"],
               domains.labels.primary_metric,
               _shown(results["source_report"]["primary"], domains.labels.primary_metric),
               f"{results['wall_time_s']:.0f} s")
  return results
