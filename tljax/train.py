"""Training and evaluation: the one path every tljax run takes.

`train_and_evaluate(config, workdir)` reads top to bottom in phases: workdir and
logging, mesh, input pipeline, model + method + optimizer, checkpoint, train
loop, final evaluation. The train step is a pure function

    state, metrics = train_step(state, source_batch, target_batch)

jitted with the state donated, parameters replicated and batches sharded over a
`('data',)` mesh of all devices (all processes in a multi-host run); the
compiler inserts the collectives, so BatchNorm statistics and every loss see the
global batch. Its randomness is derived from the state's step, and the data of
step `s` is a pure function of the seed and `s` (see `data/pipeline.py`), so a
run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import platform
import signal
import sys
import time
from typing import Any, Iterator

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import tljax
from tljax import features as features_lib
from tljax import models, optim
from tljax.data import open_domain, pipeline, preprocess
from tljax.methods import DomainOutputs, create_method

_CLASSIFIER_KEYS = ("backbone", "bottleneck", "head")


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm of a step is NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. A plain pytree: checkpointed as is."""

  step: jax.Array
  params: Any  # classifier's and method's parameters under top-level names
  model_state: Any  # non-trainable collections, e.g. {'batch_stats': ...}
  opt_state: Any
  rng: jax.Array  # base key; step keys are fold_in(rng, step)


# ----------------------------------------------------------------------------
# Variables of the two modules, kept in one tree.
# ----------------------------------------------------------------------------


def _merge(classifier_tree: dict, method_tree: dict) -> dict:
  clash = set(classifier_tree) & set(method_tree)
  if clash:
    raise ValueError(f"the method's modules {sorted(clash)} clash with the classifier's names")
  return {**classifier_tree, **method_tree}


def _split(tree: dict) -> tuple[dict, dict]:
  classifier = {k: v for k, v in tree.items() if k in _CLASSIFIER_KEYS}
  method = {k: v for k, v in tree.items() if k not in _CLASSIFIER_KEYS}
  return classifier, method


def _variables(params: dict, model_state: dict) -> tuple[dict, dict]:
  """Splits the merged tree into the classifier's and the method's variables."""
  cls_params, method_params = _split(params)
  cls_vars, method_vars = {"params": cls_params}, {"params": method_params}
  for collection, tree in model_state.items():
    cls_vars[collection], method_vars[collection] = _split(tree)
  return cls_vars, method_vars


def _merge_state(cls_updates: dict, method_updates: dict, model_state: dict) -> dict:
  merged = {}
  for collection, tree in model_state.items():
    cls_old, method_old = _split(tree)
    merged[collection] = _merge(cls_updates.get(collection, cls_old),
                                method_updates.get(collection, method_old))
  return merged


# ----------------------------------------------------------------------------
# The step functions (pure; jitted in `train_and_evaluate`).
# ----------------------------------------------------------------------------


def train_step(state: TrainState, source: dict, target: dict, *, classifier: nn.Module,
               method: nn.Module, tx: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[TrainState, dict]:
  """One optimisation step on a global source batch and target batch.

  Target labels, if the batch has them, are never read.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, method_rng = jax.random.split(step_rng)
  mutable = list(state.model_state)

  def loss_fn(params):
    cls_vars, method_vars = _variables(params, state.model_state)
    if method.joint_forward:
      # One pass over [source; target]: BatchNorm normalises both domains together.
      # The layout does not depend on the number of devices, so neither does
      # position-dependent randomness (dropout).
      images = jnp.concatenate([source["image"], target["image"]])
      (features, logits), cls_updates = classifier.apply(
          cls_vars, images, train=True, mutable=mutable, rngs={"dropout": dropout_rng})
      num_source = source["image"].shape[0]
      source_features, target_features = features[:num_source], features[num_source:]
      source_logits, target_logits = logits[:num_source], logits[num_source:]
    else:
      # One pass per domain, source first; running statistics see both in turn.
      source_rng, target_rng = jax.random.split(dropout_rng)
      (source_features, source_logits), cls_updates = classifier.apply(
          cls_vars, source["image"], train=True, mutable=mutable, rngs={"dropout": source_rng})
      (target_features, target_logits), cls_updates = classifier.apply(
          {**cls_vars, **cls_updates}, target["image"], train=True, mutable=mutable,
          rngs={"dropout": target_rng})
    outputs = DomainOutputs(source_features, target_features, source_logits,
                            target_logits, source["label"])
    cls_loss = optax.softmax_cross_entropy_with_integer_labels(
        source_logits, source["label"]).mean()
    (transfer_loss, method_metrics), method_updates = method.apply(
        method_vars, outputs, step=state.step, train=True, mutable=mutable,
        rngs={"dropout": method_rng, "method": method_rng})
    if method.trade_off_warmup > 0:
      method_metrics = {**method_metrics, "trade_off_scale": method.trade_off_scale(state.step)}
      transfer_loss = transfer_loss * method_metrics["trade_off_scale"]
    loss = cls_loss + transfer_loss
    new_model_state = _merge_state(cls_updates, method_updates, state.model_state)
    metrics = {
        "cls_loss": cls_loss,
        "transfer_loss": transfer_loss,
        "source_train_accuracy": jnp.mean(jnp.argmax(source_logits, -1) == source["label"]),
        **method_metrics,
    }
    return loss, (new_model_state, metrics)

  (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A non-finite step leaves the state as it was; the host stops the run.
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      model_state=keep(model_state, state.model_state),
      opt_state=keep(opt_state, state.opt_state))
  metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
             "learning_rate": schedule(state.step), "finite": finite}
  return new_state, metrics


def eval_step(params: dict, model_state: dict, batch: dict, *, classifier: nn.Module,
              num_classes: int) -> dict:
  """Masked per-class counts of correct predictions, and the summed loss."""
  cls_vars, _ = _variables(params, model_state)
  _, logits = classifier.apply(cls_vars, batch["image"], train=False)
  mask = batch["mask"]
  labels = batch["label"]
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
  onehot = jax.nn.one_hot(labels, num_classes)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask
  return {"correct": onehot.T @ correct, "count": onehot.T @ mask, "loss": loss.sum()}


# ----------------------------------------------------------------------------
# Host-side helpers.
# ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
  import grain, orbax.checkpoint, tensorflow_datasets  # pylint: disable=g-import-not-at-top,multiple-imports
  return {"tljax": tljax.__version__, "jax": jax.__version__, "jaxlib": jax.lib.__version__
          if hasattr(jax.lib, "__version__") else jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax-checkpoint": orbax.checkpoint.__version__, "grain": getattr(grain, "__version__", "?"),
          "tensorflow-datasets": tensorflow_datasets.__version__,
          "numpy": np.__version__, "python": platform.python_version(),
          "backend": jax.default_backend(), "devices": str(jax.device_count())}


class MetricsLog:
  """Scalars to `metrics.jsonl` and TensorBoard, on process 0 only."""

  def __init__(self, workdir: str, enabled: bool, resume_step: int):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._summary = None
    if not enabled:
      return
    if resume_step and os.path.exists(self.path):
      # Lines past the restored checkpoint are recomputed (identically) by the resumed run.
      with open(self.path) as f:
        kept = [line for line in f if json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self._summary = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, kind: str, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "kind": kind, **scalars}) + "\n")
    self._summary.write_scalars(step, {f"{kind}/{k}": v for k, v in scalars.items()})

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def _check_workdir(workdir: str) -> None:
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


def _device_batches(batches: Iterator[dict], sharding: NamedSharding,
                    size: int = 2) -> Iterator[dict]:
  """Assembles global arrays from process-local batches, `size` batches ahead."""
  queue = collections.deque()

  def put(batch):
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _zip_domains(source: Iterator[dict], target: Iterator[dict]) -> Iterator[tuple[dict, dict]]:
  for s, t in zip(source, target):
    yield s, {"image": t["image"]}  # target labels never reach the step


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _StopRequest:
  """SIGTERM (preemption) -> save a checkpoint at the next step, then exit."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def install(self):
    if jax.process_count() == 1:  # multi-process runs use jax's preemption sync point
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def uninstall(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def evaluate(eval_fn, state: TrainState, domain, config, sharding, num_classes) -> dict[str, Any]:
  """Accuracy, mean per-class accuracy and loss of the model on one domain split."""
  batches = pipeline.eval_batches(
      domain, global_batch_size=config.eval_batch_size,
      preprocess=preprocess.get_preprocess(**config.data.eval_preprocess),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.num_threads, num_workers=config.data.get("num_workers", 0))
  correct = np.zeros(num_classes)
  count = np.zeros(num_classes)
  loss = 0.0
  for batch in _device_batches(batches, sharding):
    out = jax.device_get(eval_fn(state.params, state.model_state, batch))
    correct += out["correct"]
    count += out["count"]
    loss += float(out["loss"])
  total = count.sum()
  per_class = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
  return {"accuracy": float(correct.sum() / total), "loss": loss / total,
          "mean_class_accuracy": float(np.nanmean(per_class)),
          "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
          "num_examples": int(total)}


# ----------------------------------------------------------------------------
# Model, method, optimizer and the jitted steps.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `build` makes from a config: modules, optimizer, state and jitted steps."""

  classifier: nn.Module
  method: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  frozen_norm: str
  state: TrainState
  train_step: Any  # jitted: (state, source, target) -> (state, metrics); donates state
  eval_step: Any  # jitted: (params, model_state, batch) -> counts


def build(config: ml_collections.ConfigDict, num_classes: int, mesh: jax.sharding.Mesh,
          input_shape: tuple[int, ...] | None = None) -> Setup:
  """Initialises the train state (replicated over `mesh`) and jits the steps.

  Args:
    config: the run's config.
    num_classes: classes of the task.
    mesh: the `('data',)` mesh.
    input_shape: shape of one example's input (default: square RGB images of
      `config.data.image_size`).
  """
  replicated = NamedSharding(mesh, P())
  method = create_method(config.method, num_classes=num_classes, total_steps=config.total_steps)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  if input_shape is None:
    input_shape = (config.data.image_size, config.data.image_size, 3)

  def init(classifier, rng):
    cls_rng, method_rng, dropout_rng = jax.random.split(rng, 3)
    images = jnp.zeros((2, *input_shape), jnp.float32)
    cls_vars = classifier.init({"params": cls_rng, "dropout": dropout_rng}, images, train=False)
    features, logits = classifier.apply(cls_vars, images, train=False)
    outputs = DomainOutputs(features, features, logits, logits, jnp.zeros((2,), jnp.int32))
    method_vars = method.init({"params": method_rng, "dropout": dropout_rng, "method": method_rng},
                              outputs, step=jnp.zeros((), jnp.int32), train=False)
    cls_vars, method_vars = flax.core.unfreeze(cls_vars), flax.core.unfreeze(method_vars)
    params = _merge(cls_vars.pop("params"), method_vars.pop("params", {}))
    names = sorted(set(cls_vars) | set(method_vars))
    model_state = {c: _merge(cls_vars.get(c, {}), method_vars.get(c, {})) for c in names}
    return params, model_state

  # Parameter shapes first, to learn which BatchNorm layers the groups freeze.
  probe = models.create_classifier(config.model, num_classes)
  param_shapes, _ = jax.eval_shape(functools.partial(init, probe), init_rng)
  frozen_norm = optim.frozen_norm_regex(param_shapes, config.param_groups)
  classifier = models.create_classifier(config.model, num_classes, frozen_norm=frozen_norm)
  tx, schedule = optim.create_optimizer(config, param_shapes)

  def init_state(rng):
    params, model_state = init(classifier, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), rng=train_rng)

  with jax.set_mesh(mesh):
    state = jax.jit(init_state, out_shardings=replicated)(init_rng)
  if config.model.get("init"):
    state = _load_pretrained(state, config, tx, replicated)
  step_fn = jax.jit(
      functools.partial(train_step, classifier=classifier, method=method, tx=tx,
                        schedule=schedule),
      donate_argnums=(0,), out_shardings=(replicated, replicated))
  eval_fn = jax.jit(functools.partial(eval_step, classifier=classifier, num_classes=num_classes),
                    out_shardings=replicated)
  return Setup(classifier=classifier, method=method, tx=tx, schedule=schedule,
               frozen_norm=frozen_norm, state=state, train_step=step_fn, eval_step=eval_fn)


# ----------------------------------------------------------------------------
# train_and_evaluate
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Trains on `config.source` (labelled) + `config.target` (unlabelled), evaluates both.

  Args:
    config: see `configs/default.py`.
    workdir: checkpoints, metrics and `results.json` go here; an existing
      checkpoint there is resumed.
    devices: devices of the mesh (default: all devices of all processes).

  Returns:
    The contents of `results.json`.
  """
  start_time = time.time()
  config = ml_collections.ConfigDict(config)  # a copy; `config.lock()` below
  is_main = jax.process_index() == 0

  # ---------------------------------------------------------------- workdir
  _check_workdir(workdir)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("tljax %s | %s", tljax.__version__, json.dumps(versions()))

  # ---------------------------------------------------------------- mesh
  devices = list(devices) if devices is not None else jax.devices()
  mesh = jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  num_shards = len(devices)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % num_shards:
      raise ValueError(f"config.{name}={config[name]} must be divisible by the number of "
                       f"devices ({num_shards})")
  logging.info("Mesh: %d devices over %d processes (%s).", num_shards, jax.process_count(),
               jax.default_backend())

  # ---------------------------------------------------------------- data
  open_kwargs = dict(data_dir=config.data_dir, manual_dir=config.manual_dir,
                     cache=config.data.cache, skip_corrupt=config.data.get("skip_corrupt", False))
  if jax.process_count() > 1:
    # Process 0 builds missing datasets first; the others then only read them.
    if is_main:
      for name in {config.source, config.target}:
        open_domain(name, config.source_split if name == config.source else config.target_split,
                    **{**open_kwargs, "cache": False})
    multihost_utils.sync_global_devices("tljax: datasets built")
  source_train = open_domain(config.source, config.source_split, **open_kwargs)
  target_train = open_domain(config.target, config.target_split, **open_kwargs)
  source_eval = open_domain(config.source, config.eval_source_split, **open_kwargs)
  target_eval = open_domain(config.target, config.eval_target_split, **open_kwargs)
  if source_train.class_names != target_train.class_names:
    raise ValueError(
        f"source {config.source!r} and target {config.target!r} have different classes: "
        f"{source_train.class_names[:5]}... vs {target_train.class_names[:5]}...; "
        "domain adaptation needs one label space")
  num_classes = source_train.num_classes
  logging.info("Source %s:%s (%d), target %s:%s (%d, labels unused), %d classes.",
               config.source, config.source_split, len(source_train), config.target,
               config.target_split, len(target_train), num_classes)

  if config.get("features") is not None:
    # Heads on cached features: every split becomes feature vectors of a frozen network.
    extractor = features_lib.create_extractor(
        config.features, config.features.image_size, config.features.eval_preprocess.to_dict())
    cache_dir = config.features.get("cache_dir") or os.path.join(workdir, "feature_cache")
    source_train, target_train, source_eval, target_eval = (
        features_lib.feature_domain(extractor, d, cache_dir, num_threads=config.data.num_threads)
        for d in (source_train, target_train, source_eval, target_eval))
  input_shape = preprocess.get_preprocess(**config.data.eval_preprocess)(
      source_train.source[0], np.random.default_rng(0))["image"].shape

  # ---------------------------------------------------------------- model, method, optimizer
  setup = build(config, num_classes, mesh, input_shape)
  state = setup.state
  counts = optim.describe_groups(state.params, config.param_groups)
  logging.info("Parameters per group: %s; BatchNorm frozen where: %s", counts,
               setup.frozen_norm or "(none)")
  step_fn, eval_fn = setup.train_step, setup.eval_step

  # ---------------------------------------------------------------- checkpoint
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))
  if manager.latest_step() is not None:
    restored_step = manager.latest_step()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
    state = manager.restore(restored_step, args=ocp.args.StandardRestore(abstract))
    logging.info("Resumed from the checkpoint of step %d.", restored_step)
  first_step = int(state.step)
  metrics_log = MetricsLog(workdir, is_main, first_step)

  # ---------------------------------------------------------------- train loop
  data_kwargs = dict(global_batch_size=config.batch_size, start_step=first_step,
                     process_index=jax.process_index(), process_count=jax.process_count(),
                     num_threads=config.data.num_threads,
                     num_workers=config.data.get("num_workers", 0))
  train_pp = preprocess.get_preprocess(**config.data.train_preprocess)
  batches = _zip_domains(
      _device_batches(pipeline.train_batches(source_train, preprocess=train_pp,
                                             seed=2 * config.seed, **data_kwargs),
                      batch_sharding),
      _device_batches(pipeline.train_batches(target_train, preprocess=train_pp,
                                             seed=2 * config.seed + 1, **data_kwargs),
                      batch_sharding))

  def run_eval(step):
    source = evaluate(eval_fn, state, source_eval, config, batch_sharding, num_classes)
    target = evaluate(eval_fn, state, target_eval, config, batch_sharding, num_classes)
    scalars = {"source_accuracy": source["accuracy"], "target_accuracy": target["accuracy"],
               "target_mean_class_accuracy": target["mean_class_accuracy"],
               "source_loss": source["loss"], "target_loss": target["loss"]}
    metrics_log.write(step, "eval", scalars)
    logging.info("eval @ %d: source accuracy %.2f%%, target accuracy %.2f%%", step,
                 100 * source["accuracy"], 100 * target["accuracy"])
    return source, target

  stop = _StopRequest().install()
  total = config.total_steps
  pending = None  # (step, metrics) of the step dispatched last: read one step late
  window = collections.defaultdict(float)
  window_steps, window_start = 0, time.time()
  compile_start = time.time()

  def save(step, force=False):
    manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def check(step, metrics):
    nonlocal window_steps, window_start
    metrics = jax.device_get(metrics)
    if not metrics["finite"]:
      manager.wait_until_finished()
      raise NonFiniteError(
          f"step {step}: loss={float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])} "
          f"is not finite; training stopped (latest checkpoint: step {manager.latest_step()}). "
          "Lower config.optimizer.learning_rate or config.method.trade_off, or set "
          "config.optimizer.grad_clip_norm.")
    for k, v in metrics.items():
      if k != "finite":
        window[k] += float(v)
    window_steps += 1
    if step % config.log_every == 0 or step == total:
      elapsed = time.time() - window_start
      means = {k: v / window_steps for k, v in window.items()}
      rate = window_steps / max(elapsed, 1e-9)
      metrics_log.write(step, "train", {**means, "steps_per_second": rate})
      logging.info("step %d/%d | loss %.4f (cls %.4f, transfer %.4f) | %.2f steps/s | ETA %s",
                   step, total, means["loss"], means["cls_loss"], means["transfer_loss"],
                   rate, _format_duration((total - step) / max(rate, 1e-9)))
      window.clear()
      window_steps, window_start = 0, time.time()

  source_result = target_result = None
  step = first_step
  train_time = 0.0
  try:
    for step in range(first_step + 1, total + 1):
      source_batch, target_batch = next(batches)
      state, metrics = step_fn(state, source_batch, target_batch)
      if step == first_step + 1:
        jax.block_until_ready(state)
        logging.info("First step (compilation included) took %.1fs.", time.time() - compile_start)
        window_start = loop_start = time.time()
      if pending is not None:
        check(*pending)
      pending = (step, metrics)
      preempted = stop.requested or (jax.process_count() > 1 and manager.reached_preemption(step))
      if step % config.eval_every == 0 or step == total:
        check(*pending)
        pending = None
        source_result, target_result = run_eval(step)
      if step % config.checkpoint_every == 0 or step == total or preempted:
        if pending is not None:
          check(*pending)
          pending = None
        save(step, force=preempted)
      if preempted:
        manager.wait_until_finished()
        logging.warning("SIGTERM: saved the checkpoint of step %d; rerun the same command "
                        "to resume.", step)
        metrics_log.close()
        sys.exit(128 + signal.SIGTERM)
    if pending is not None:
      check(*pending)
    if total > first_step:
      train_time = time.time() - loop_start
  finally:
    stop.uninstall()
    manager.wait_until_finished()

  # ---------------------------------------------------------------- results
  if target_result is None:  # nothing left to train: the run had already finished
    source_result, target_result = run_eval(int(state.step))
  results = {
      "target_accuracy": target_result["accuracy"],
      "source_accuracy": source_result["accuracy"],
      "target_mean_class_accuracy": target_result["mean_class_accuracy"],
      "target_per_class_accuracy": target_result["per_class_accuracy"],
      "source_per_class_accuracy": source_result["per_class_accuracy"],
      "target_eval": f"{config.target}:{config.eval_target_split}",
      "source_eval": f"{config.source}:{config.eval_source_split}",
      "step": int(state.step),
      "method": config.method.name,
      "train_steps_per_second": (total - first_step - 1) / train_time if train_time else None,
      "wall_time_s": time.time() - start_time,
      "config": config.to_dict(),
      "versions": versions(),
  }
  if is_main:
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
  metrics_log.close()
  logging.info("Done: target accuracy %.2f%%, source accuracy %.2f%% (%s in all).",
               100 * results["target_accuracy"], 100 * results["source_accuracy"],
               _format_duration(results["wall_time_s"]))
  return results


def _load_pretrained(state: TrainState, config, tx, sharding) -> TrainState:
  """Merges a pretrained checkpoint (`config.model.init`) into the fresh state."""
  from tljax.models import checkpoints  # pylint: disable=g-import-not-at-top

  cls_vars, _ = _variables(jax.device_get(state.params), jax.device_get(state.model_state))
  loaded = checkpoints.load(cls_vars, config.model.init, backbone=config.model.name,
                            dont_load=tuple(config.model.get("dont_load", ())))
  params = {**state.params, **loaded["params"]}
  model_state = {c: {**state.model_state[c], **loaded.get(c, {})} for c in state.model_state}
  params, model_state = jax.device_put((params, model_state), sharding)
  return state.replace(params=params, model_state=model_state,
                       opt_state=jax.jit(tx.init, out_shardings=sharding)(params))
