"""The tljax side of the benchmarks: every timed train step, built and run in JAX.

- `prepare_train_step` / `time_train_step`: a config's jitted train step
  (`tljax.train.build`) on synthetic batches of its shapes, as the trainer runs
  it (`benchmarks.train_step`, and the digits rows of `benchmarks.flax_vs_torch`).
- `build_flax_step` / `time_flax`: a backbone's train step (forward, backward and
  SGD-momentum update of a 1000-class classifier on random images), with
  frozen stages differentiated out (`Case.frozen`).
- `flax_digits_step` / `flax_adapt_step`: a method's digits step, and its
  Office-31 step fed by the trainer's own input pipeline (`train.train_batches`).
- `time_matmul`: the machine's jitted fp32 matmul rate.

The PyTorch counterparts are in `benchmarks.torch_steps`; the two are never
imported into one process by `benchmarks.flax_vs_torch`.
"""

from __future__ import annotations

import os
import re
import resource
import time
from typing import Any, Callable

import flax.traverse_util
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from benchmarks import cases
from benchmarks import timing
from tljax import models
from tljax import train

# ----------------------------------------------------------------------------
# A config's train step, as the trainer compiles it.
# ----------------------------------------------------------------------------


def data_mesh() -> jax.sharding.Mesh:
  """The trainer's mesh: every device on one "data" axis."""
  devices = jax.devices()
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def compile_last_phase(setup: train.Setup, state: Any, batch: dict) -> tuple[Any, float]:
  """`(compiled step, compile seconds)` of `setup`'s train step for `batch` in
  its last phase (a method with phases, e.g. source pre-training first, spends
  all but its first steps there)."""
  boundaries = setup.train_step.boundaries
  start = time.perf_counter()
  compiled = setup.train_step.lower(state, batch, boundaries[-1] if boundaries else 0).compile()
  return compiled, time.perf_counter() - start


def images_per_step(batch: dict) -> int:
  """Every image a step reads: each domain's `image` and its extra views."""
  return sum(v.shape[0] for domain in batch.values() for k, v in domain.items()
             if k.startswith("image"))


def prepare_train_step(config: ml_collections.ConfigDict, *, num_classes: int,
                       seed: int = 0) -> tuple[Any, Any, Any, dict, float]:
  """`(setup, compiled step, state, batch, compile seconds)` of a config's train
  step on a synthetic batch of its shapes, in its last phase."""
  mesh = data_mesh()
  batch_sharding = NamedSharding(mesh, P("data"))
  setup = train.build(config, num_classes, mesh, num_target_examples=2 * config.batch_size)
  rng = np.random.default_rng(seed)
  size = config.data.image_size
  shape = (config.batch_size, size, size, 3)

  def batch(with_labels: bool):
    # `index`: the examples' positions in their split (methods with per-example
    # state, e.g. pseudo-labels, read it).
    b = {"image": rng.standard_normal(shape, dtype=np.float32),
         "index": np.arange(config.batch_size, dtype=np.int32)}
    if with_labels:
      b["label"] = rng.integers(0, num_classes, config.batch_size).astype(np.int32)
    return jax.device_put(b, batch_sharding)

  batch_ = {"source": batch(True), "target": batch(False)}
  batch_ = {k: v for k, v in batch_.items() if k in setup.method.inputs}
  for view in setup.method.target_views:
    batch_["target"][view] = batch(False)["image"]
  compiled, compile_s = compile_last_phase(setup, setup.state, batch_)
  return setup, compiled, setup.state, batch_, compile_s


def time_train_step(config: ml_collections.ConfigDict, *, num_classes: int, steps: int,
                    warmup: int) -> dict[str, float]:
  """Compile time, seconds per step, images/s and XLA's memory figures of one config."""
  devices = jax.devices()
  _, compiled, state, batch_, compile_s = prepare_train_step(config, num_classes=num_classes)
  memory = compiled.memory_analysis()
  for _ in range(warmup):
    state, metrics = compiled(state, batch_)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch_)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / steps
  images = images_per_step(batch_)
  figures = {
      "compile_s": compile_s,
      "step_ms": 1e3 * step_s,
      "steps_per_s": 1.0 / step_s,
      "images_per_s": images / step_s,  # every image the step reads
  }
  if memory is not None:
    figures["step_temp_mib"] = memory.temp_size_in_bytes / 2**20
    figures["step_args_mib"] = memory.argument_size_in_bytes / 2**20
    figures["step_peak_mib_estimate"] = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                         + memory.output_size_in_bytes
                                         - memory.alias_size_in_bytes) / 2**20
  stats = devices[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    figures["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  figures["process_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return figures


# ----------------------------------------------------------------------------
# The rows of the Flax-vs-PyTorch table.
# ----------------------------------------------------------------------------


def xla_flops(compiled, devices: int = 1) -> float:
  """XLA's cost analysis of a compiled step: its FLOPs (0 when not reported).
  A step partitioned over `devices` reports one device's share: times `devices`."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return devices * float(cost.get("flops", 0.0))


def flax_result(dtype: str, compile_s: float, summary: dict[str, float],
                flops: float) -> dict[str, Any]:
  """A Flax row: timings, FLOPs and the peak memory of this process's device."""
  stats = jax.devices()[0].memory_stats() or {}
  return {"framework": "flax", "dtype": dtype, "compile_s": compile_s, **summary,
          "flops": flops, "gflops_per_s": flops / summary["step_s"] / 1e9,
          "peak_bytes": stats.get("peak_bytes_in_use", timing.peak_rss_bytes()),
          "peak_source": "device" if "peak_bytes_in_use" in stats else "rss",
          "device": str(jax.devices()[0]), "backend": jax.default_backend(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _random_variables(classifier, size: int):
  """Fan-in scaled normal weights drawn with numpy.

  `classifier.init` would do, but compiling its random number generation
  takes longer than the benchmark itself on a small CPU.
  """
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(classifier.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def split_frozen(params: Any, frozen: str) -> tuple[Any, Any]:
  """`(trainable, frozen)` flat dicts of '/'-joined parameter paths."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  is_frozen = {key: bool(frozen) and re.fullmatch(frozen, key) is not None for key in flat}
  return ({key: value for key, value in flat.items() if not is_frozen[key]},
          {key: value for key, value in flat.items() if is_frozen[key]})


def build_flax_step(case: cases.Case, dtype: str = "float32", *, unrolled: bool = False):
  """The jitted backbone train step of `case` and its arguments.

  Returns `(step, state, images, labels)`; `step(state, images, labels)`
  returns `(state, loss)` and donates `state`. With `case.frozen`, the
  gradient is taken w.r.t. the trainable parameters only, the frozen ones
  being constants of the loss, so XLA never builds their backward pass.
  `unrolled`: a remat ViT's blocks unrolled instead of scanned.
  """
  kwargs = {"image_size": case.size} if case.model.startswith("vit_") else {}
  if case.remat:
    kwargs.update(remat=True, scan_blocks=case.model.startswith("vit_") and not unrolled)
  compute_dtype = jnp.dtype(dtype)
  frozen_norm = case.frozen
  classifier = models.Classifier(
      models.get_backbone(case.model, dtype=compute_dtype, frozen_norm=frozen_norm, **kwargs),
      num_classes=cases.NUM_CLASSES, dtype=compute_dtype)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(case.batch, case.size, case.size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, cases.NUM_CLASSES, size=(case.batch,)))
  variables = _random_variables(classifier, case.size)
  trainable, frozen = split_frozen(variables["params"], case.frozen)
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = {"trainable": trainable, "frozen": frozen,
           "batch_stats": variables.get("batch_stats", {}),
           "opt": optimizer.init(trainable), "rng": jax.random.key(1)}

  def train_step(state, images, labels):
    rng, dropout_rng = jax.random.split(state["rng"])

    def loss_fn(trainable):
      params = flax.traverse_util.unflatten_dict({**trainable, **state["frozen"]}, sep="/")
      (_, logits), updates = classifier.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
    updates, opt = optimizer.update(grads, state["opt"], state["trainable"])
    trainable = optax.apply_updates(state["trainable"], updates)
    return {"trainable": trainable, "frozen": state["frozen"], "batch_stats": batch_stats,
            "opt": opt, "rng": rng}, loss

  return jax.jit(train_step, donate_argnums=(0,)), state, images, labels


def time_flax(case: cases.Case, steps: int, warmup: int, dtype: str = "float32") -> dict[str, Any]:
  """Compiles and times the Flax train step; returns timings, FLOPs and peak memory."""
  step, state, images, labels = build_flax_step(case, dtype)
  start = time.perf_counter()
  compiled = step.lower(state, images, labels).compile()
  compile_s = time.perf_counter() - start
  carry = {"state": state}

  def one_step():
    carry["state"], carry["loss"] = compiled(carry["state"], images, labels)
    carry["loss"].block_until_ready()

  summary = timing.summary(*timing.timed_loop(one_step, steps, warmup), case.batch)
  loss = float(carry["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"{case.name}: non-finite loss {loss}")
  result = flax_result(dtype, compile_s, summary, xla_flops(compiled))
  if case.remat and case.model.startswith("vit_"):
    # XLA's cost analysis counts a loop's body once: the FLOPs of the same
    # step with its blocks unrolled (lowered only; after the peak is read).
    del carry, state
    unrolled, state, _, _ = build_flax_step(case, dtype, unrolled=True)
    result["flops"] = xla_flops(unrolled.lower(state, images, labels))
    result["gflops_per_s"] = result["flops"] / summary["step_s"] / 1e9
  return result


def flax_digits_step(case: cases.Case, dtype: str = "float32"
                     ) -> tuple[Callable[[], Any], Any, int, float]:
  """`(step, compiled, images per step, compile seconds)`: one call of `step`
  runs the method's jitted train step (`configs/<method>.py:digits`, tljax's
  trainer) on fixed synthetic batches of `case.batch` source + target images,
  carrying the state, and returns its metrics."""
  config = cases.digits_config(case.model, case.batch)
  if dtype != "float32":
    config.model.dtype = dtype
  _, compiled, state, batch, compile_s = prepare_train_step(
      config, num_classes=cases.DIGITS_CLASSES)
  carry = {"state": state}

  def step():
    carry["state"], metrics = compiled(carry["state"], batch)
    return metrics

  return step, compiled, images_per_step(batch), compile_s


def time_flax_digits(case: cases.Case, steps: int, warmup: int,
                     dtype: str = "float32") -> dict[str, Any]:
  """The method's jitted train step (`flax_digits_step`)."""
  step, compiled, images, compile_s = flax_digits_step(case, dtype)
  summary = timing.summary(
      *timing.timed_loop(lambda: jax.block_until_ready(step()), steps, warmup), images)
  return flax_result(dtype, compile_s, summary, xla_flops(compiled, jax.device_count()))


def flax_adapt_step(case: cases.Case, dtype: str = "float32", *, data_dir: str, threads: int
                    ) -> tuple[Callable[[], Any], Any, int, float]:
  """`(step, compiled, images per step, compile seconds)`: one call of `step`
  takes the next batch from the trainer's input pipeline (`train.train_batches`:
  JPEG decoding, TLlib's random resized crop and flip, `threads` threads,
  prefetched onto the devices) and runs the method's jitted train step on it."""
  config = cases.adapt_config(case, data_dir, threads)
  if dtype != "float32":
    config.model.dtype = dtype
  mesh = data_mesh()
  domains = train.open_data(config, data_dir)
  setup = train.build(config, domains.num_classes, mesh, domains.input_shape,
                      num_target_examples=len(domains.target_train))
  batches = train.train_batches(config, domains, setup.method, 0,
                                NamedSharding(mesh, P("data")))
  first = next(batches)
  compiled, compile_s = compile_last_phase(setup, setup.state, first)
  carry = {"state": setup.state}

  def step():
    carry["state"], metrics = compiled(carry["state"], next(batches))
    return metrics

  return step, compiled, images_per_step(first), compile_s


def time_flax_adapt(case: cases.Case, steps: int, warmup: int, dtype: str = "float32", *,
                    data_dir: str, threads: int) -> dict[str, Any]:
  """`flax_adapt_step`, timed; CPU seconds include the reader threads."""
  step, compiled, images, compile_s = flax_adapt_step(case, dtype, data_dir=data_dir,
                                                      threads=threads)
  summary = timing.summary(*timing.timed_loop(lambda: jax.block_until_ready(step()), steps,
                                              warmup, timing.cpu_seconds), images)
  return flax_result(dtype, compile_s, summary, xla_flops(compiled, jax.device_count()))


def time_matmul(size: int = cases.MATMUL_SIZE, repeats: int = 3) -> dict[str, Any]:
  """GFLOP/s of a jitted `size x size` fp32 matmul."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(key, (size, size), jnp.float32) for key in keys)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  matmul(a, b).block_until_ready()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    seconds.append(time.perf_counter() - start)
  return {"framework": "flax", "size": size, "seconds": min(seconds),
          "gflops_per_s": 2.0 * size**3 / min(seconds) / 1e9}


# kind -> the function that times a `Case` of that kind: (case, steps, warmup, dtype),
# plus `data_dir` and `threads` for 'adapt'.
TIMERS: dict[str, Callable[..., dict[str, Any]]] = {
    "backbone": time_flax,
    "digits": time_flax_digits,
    "adapt": time_flax_adapt,
}
