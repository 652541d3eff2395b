r"""Train-step benchmark of the backbones: Flax next to PyTorch.

One step is forward, backward and an SGD-momentum update of a 1000-class
classifier on random images, as in ImageNet training:

  python -m tljax.models.bench --models=resnet50,vit_base_patch16 \
      --batch=32 --sizes=112,224 --steps=5 --out=/tmp/bench.json

Every (framework, model, size) runs in a child process of its own, so that
thread pools do not compete and the peak memory of one does not hide in the
other's: the peak is the device's `peak_bytes_in_use` where the backend reports
it (GPU/TPU), else the process's resident-set high-water mark (CPU; it includes
the framework's own ~0.5-1 GB). XLA options come from the XLA_FLAGS environment
variable as usual; `--xla_flags` appends to it for the Flax children only, which
is how flag variants are compared.

Timings on a shared CPU are noisy: compare runs made back to back, look at the
min as well as the median, and prefer more steps over more runs. `cpu s` is the
process CPU time per step, which other processes on the machine disturb much
less than wall time; pinned to one core (`taskset -c 0 python -m ...`, which
both frameworks honour when sizing their thread pools) it measures the work
each framework does per step, without PyTorch's OpenMP threads spinning or
XLA's pool waiting on a descheduled sibling.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags

_MODELS = None
_BATCH = None
_SIZES = None
_STEPS = None
_WARMUP = None
_DTYPE = None
_TORCH = None
_TORCH_CHANNELS_LAST = None
_XLA_FLAGS = None
_OUT = None
_WORKER = None


def _define_flags() -> None:
  """Defines the command-line flags; called only when run as a program, so that
  importing this module for its functions defines no flags."""
  global _MODELS, _BATCH, _SIZES, _STEPS, _WARMUP, _DTYPE, _TORCH, _TORCH_CHANNELS_LAST, _XLA_FLAGS, _OUT, _WORKER
  _MODELS = flags.DEFINE_list("models", ["resnet50", "vit_base_patch16"],
                              "Backbone registry names.")
  _BATCH = flags.DEFINE_integer("batch", 32, "Images per step.")
  _SIZES = flags.DEFINE_list("sizes", ["112", "224"], "Square image sizes.")
  _STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after the warm-up).")
  _WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                             "Flax compute dtype (PyTorch always runs fp32).")
  _TORCH = flags.DEFINE_bool("torch", True, "Also time PyTorch when installed.")
  _TORCH_CHANNELS_LAST = flags.DEFINE_bool(
      "torch_channels_last", False, "Run PyTorch in channels_last (NHWC) memory format.")
  _XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS for Flax runs.")
  _OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
  _WORKER = flags.DEFINE_enum("worker", None, ["flax", "torch"],
                              "Internal: measure one configuration in this process.")


NUM_CLASSES = 1000
_RESULT_PREFIX = "BENCH_RESULT "


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _summary(step_seconds: list[float], cpu_seconds: list[float],
             batch: int) -> dict[str, float]:
  median = statistics.median(step_seconds)
  return {"step_s": median, "step_min_s": min(step_seconds),
          "images_per_s": batch / median, "cpu_s": statistics.median(cpu_seconds)}


def _random_variables(classifier, size: int):
  """Fan-in scaled normal weights drawn with numpy.

  `classifier.init` would do, but compiling its random number generation
  takes longer than the benchmark itself on a small CPU.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

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


def time_flax(model: str, size: int, batch: int, steps: int, warmup: int,
              dtype: str = "float32") -> dict[str, Any]:
  """Compiles and times the Flax train step; returns timings and peak memory."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from tljax import models  # pylint: disable=g-import-not-at-top

  kwargs = {"image_size": size} if model.startswith("vit_") else {}
  compute_dtype = jnp.dtype(dtype)
  classifier = models.Classifier(
      models.get_backbone(model, dtype=compute_dtype, **kwargs), num_classes=NUM_CLASSES,
      dtype=compute_dtype)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch,)))
  variables = _random_variables(classifier, size)
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = {"params": variables["params"],
           "batch_stats": variables.get("batch_stats", {}),
           "opt": optimizer.init(variables["params"]),
           "rng": jax.random.key(1)}

  def train_step(state, images, labels):
    rng, dropout_rng = jax.random.split(state["rng"])

    def loss_fn(params):
      (_, logits), updates = classifier.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt": opt, "rng": rng}, loss

  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(state, images, labels).compile()
  compile_s = time.perf_counter() - start
  step_seconds, cpu_seconds = [], []
  for step in range(warmup + steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, loss = compiled(state, images, labels)
    loss.block_until_ready()
    if step >= warmup:
      step_seconds.append(time.perf_counter() - start)
      cpu_seconds.append(time.process_time() - cpu_start)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"{model}: non-finite loss {float(loss)}")
  stats = jax.devices()[0].memory_stats() or {}
  return {"framework": "flax", "model": model, "size": size, "batch": batch,
          "dtype": dtype, "compile_s": compile_s, **_summary(step_seconds, cpu_seconds, batch),
          "peak_bytes": stats.get("peak_bytes_in_use", _peak_rss_bytes()),
          "peak_source": "device" if "peak_bytes_in_use" in stats else "rss",
          "device": str(jax.devices()[0]),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _torch_model(model: str, size: int):
  import timm  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  if model.startswith(("resnet", "vgg")):
    return getattr(torchvision.models, model)(num_classes=NUM_CLASSES)
  if model == "inception_v3":  # as the Flax backbone's default: no auxiliary head
    return torchvision.models.inception_v3(num_classes=NUM_CLASSES, aux_logits=False,
                                           init_weights=False)
  if model.startswith("vit_"):
    return timm.create_model(f"{model}_224", pretrained=False, img_size=size,
                             num_classes=NUM_CLASSES)
  raise ValueError(f"no PyTorch counterpart for {model!r}")


def time_torch(model: str, size: int, batch: int, steps: int, warmup: int,
               channels_last: bool = False) -> dict[str, Any]:
  """Times the same train step in PyTorch (eager, fp32)."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  network = _torch_model(model, size).train()
  images = torch.randn(batch, 3, size, size)
  labels = torch.randint(0, NUM_CLASSES, (batch,))
  if channels_last:
    network = network.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
  step_seconds, cpu_seconds, first_step_s = [], [], 0.0
  for step in range(warmup + steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(network(images), labels)
    loss.backward()
    optimizer.step()
    elapsed = time.perf_counter() - start
    if step == 0:
      first_step_s = elapsed
    if step >= warmup:
      step_seconds.append(elapsed)
      cpu_seconds.append(time.process_time() - cpu_start)
  return {"framework": "torch", "model": model, "size": size, "batch": batch,
          "dtype": "float32", "first_step_s": first_step_s,
          **_summary(step_seconds, cpu_seconds, batch), "peak_bytes": _peak_rss_bytes(),
          "peak_source": "rss", "threads": torch.get_num_threads(),
          "channels_last": channels_last}


def _run_worker(framework: str, model: str, size: int) -> dict[str, Any]:
  """Measures one configuration in a fresh interpreter."""
  command = [sys.executable, "-m", "tljax.models.bench", f"--worker={framework}",
             f"--models={model}", f"--sizes={size}", f"--batch={_BATCH.value}",
             f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
             f"--dtype={_DTYPE.value}",
             f"--torch_channels_last={_TORCH_CHANNELS_LAST.value}"]
  env = dict(os.environ)
  if framework == "flax" and _XLA_FLAGS.value:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  for line in result.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX):])
  raise RuntimeError(f"{framework} benchmark of {model}@{size} failed:\n"
                     f"{result.stderr[-4000:]}")


def _format_table(rows: list[dict[str, Any]]) -> str:
  header = (f"{'model':<18} {'size':>4} {'batch':>5} | {'flax s/step':>11} {'cpu s':>6} "
            f"{'img/s':>6} {'compile s':>9} {'peak GB':>7} | {'torch s/step':>12} "
            f"{'cpu s':>6} {'img/s':>6} {'peak GB':>7} | {'flax/torch':>10}")
  lines = [header, "-" * len(header)]
  for row in rows:
    flax_result, torch_result = row["flax"], row.get("torch")
    line = (f"{row['model']:<18} {row['size']:>4} {row['batch']:>5} | "
            f"{flax_result['step_s']:>11.3f} {flax_result['cpu_s']:>6.2f} "
            f"{flax_result['images_per_s']:>6.1f} {flax_result['compile_s']:>9.1f} "
            f"{flax_result['peak_bytes'] / 1e9:>7.2f} | ")
    if torch_result:
      line += (f"{torch_result['step_s']:>12.3f} {torch_result['cpu_s']:>6.2f} "
               f"{torch_result['images_per_s']:>6.1f} "
               f"{torch_result['peak_bytes'] / 1e9:>7.2f} | "
               f"{flax_result['step_s'] / torch_result['step_s']:>10.2f}")
    else:
      line += f"{'-':>12} {'-':>6} {'-':>6} {'-':>7} | {'-':>10}"
    lines.append(line)
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  sizes = [int(size) for size in _SIZES.value]
  if _WORKER.value:
    model, size = _MODELS.value[0], sizes[0]
    if _WORKER.value == "flax":
      result = time_flax(model, size, _BATCH.value, _STEPS.value, _WARMUP.value,
                         _DTYPE.value)
    else:
      result = time_torch(model, size, _BATCH.value, _STEPS.value, _WARMUP.value,
                          _TORCH_CHANNELS_LAST.value)
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return

  with_torch = _TORCH.value
  if with_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("PyTorch is not installed: timing Flax only.")
      with_torch = False
  rows = []
  for model in _MODELS.value:
    for size in sizes:
      row = {"model": model, "size": size, "batch": _BATCH.value,
             "flax": _run_worker("flax", model, size)}
      if with_torch:
        row["torch"] = _run_worker("torch", model, size)
      rows.append(row)
      print(f"done: {model}@{size}px", flush=True)
  print(_format_table(rows))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
