r"""Train-step benchmark of the backbones: Flax next to PyTorch, in one table.

One step is forward, backward and an SGD-momentum update of a 1000-class
classifier on random images, as in ImageNet training. The command that writes
`experiments/results/backbone_bench.{md,json}`:

  python -m tljax.models.bench --models=resnet50,vit_base_patch16 --sizes=112,224 \
      --batch=32 --steps=3 --out=experiments/results/backbone_bench

What it prints, in this order:
1. The machine's matmul rate: a jitted 4096x4096 fp32 matmul (and PyTorch's),
   timed first; every "% mm" column is a fraction of the jitted rate.
2. One row per case: seconds per step (median), process CPU seconds per step,
   GFLOP/s and % of the matmul rate, for Flax and for PyTorch, and their ratio.
   Flax FLOPs are XLA's cost analysis of the compiled step (every op, matmuls
   and convolutions dominating). PyTorch FLOPs are counted by
   `torch.utils.flop_counter.FlopCounterMode` over one step (matmuls,
   convolutions and attention, forward and backward: what the model does,
   including what freezing saves).
3. The frozen-backbone case (`--frozen`, default on): ResNet-50 with its stem
   and stages 1-3 frozen. Flax differentiates a function of the trainable
   subtree only (the frozen parameters are closed over) and its frozen
   BatchNorm layers use running statistics (`frozen_norm`); PyTorch sets
   `requires_grad=False` on the same layers and puts their BatchNorm layers in
   eval mode.

Every (framework, case) runs in a child process of its own, so that thread
pools do not compete and one's peak memory does not hide in the other's: the
peak is the device's `peak_bytes_in_use` where the backend reports it
(GPU/TPU), else the process's resident-set high-water mark (CPU; it includes
the framework's own ~0.5-1 GB).

Environment of the children (`--hugepages`, default on): glibc's malloc is
told to back its large allocations with transparent huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), for both frameworks. XLA:CPU
allocates a step's temporaries afresh on every call; with 4 KiB pages the
kernel faults and zeroes each page again every step (a ResNet-50 step at 112
px, batch 16, refaulted 570 MiB: ~15% of the step in system time). XLA
options come from XLA_FLAGS as usual; `--xla_flags` appends to it for the Flax
children only.

4. The digits step of each method (`--digits_methods`, every method by
   default): tljax's whole jitted train step (`configs/<method>.py:digits`, the
   small CNN, 64 source + 64 target 28-px images; a method with source
   pre-training in its adaptation phase) beside the same step in PyTorch,
   written from TLlib's example (`tljax/reference_torch.py`: network, losses,
   parameter groups, schedule), where that restatement exists (ERM and the
   sums of DANN, CDAN, MDD, DAN, JAN, MCC, AFN and BSP); `-` elsewhere.

5. The adaptation steps (`--adapt_methods`, default ERM, DAN, DANN and CDAN,
   at `--adapt_sizes`): ResNet-50 with the method's networks
   (`configs/<method>.py:office31`, random weights), `batch` source + `batch`
   target images per step, each step taking its batches from the input
   pipeline (JPEGs in Office-31's layout written for the run, decoded, cropped
   and flipped as TLlib does: tljax's trainer pipeline with
   `--adapt_threads` reader threads; PyTorch's `DataLoader` with as many
   worker processes). Their `cpu s` include the pipeline's threads/workers.

More rows: a case is a `Case`; `ROW_KINDS` maps its `kind` to the functions
that time it in each framework (PyTorch optional), so another kind of step
(e.g. a method's digits step) is one more entry and one more `Case` in
`default_cases`.

Timings on a shared CPU are noisy: look at `cpu s` (process CPU time per step)
as well as wall time, and compare runs made back to back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags

_MODELS = None
_BATCH = None
_SIZES = None
_STEPS = None
_WARMUP = None
_DTYPE = None
_TORCH = None
_FROZEN = None
_HUGEPAGES = None
_XLA_FLAGS = None
_OUT = None
_WORKER = None
_CASE = None
_MATMUL_SIZE = None
_DIGITS = None
_DIGITS_STEPS = None
_ADAPT = None
_ADAPT_SIZES = None
_ADAPT_BACKBONE = None
_ADAPT_IMAGES = None
_ADAPT_THREADS = None
_ADAPT_DIR = None


def _define_flags() -> None:
  """Defines the command-line flags; called only when run as a program, so that
  importing this module for its functions defines no flags."""
  global _MODELS, _BATCH, _SIZES, _STEPS, _WARMUP, _DTYPE, _TORCH, _FROZEN, _HUGEPAGES
  global _XLA_FLAGS, _OUT, _WORKER, _CASE, _MATMUL_SIZE, _DIGITS, _DIGITS_STEPS
  global _ADAPT, _ADAPT_SIZES, _ADAPT_BACKBONE, _ADAPT_IMAGES, _ADAPT_THREADS, _ADAPT_DIR
  _MODELS = flags.DEFINE_list("models", ["resnet50", "vit_base_patch16"],
                              "Backbone registry names.")
  _BATCH = flags.DEFINE_integer("batch", 32, "Images per step.")
  _SIZES = flags.DEFINE_list("sizes", ["112", "224"], "Square image sizes.")
  _STEPS = flags.DEFINE_integer("steps", 3, "Timed steps (after the warm-up).")
  _WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                             "Flax compute dtype (parameters stay fp32; PyTorch runs fp32 "
                             "on CPU, autocast bf16 on CUDA).")
  _TORCH = flags.DEFINE_bool("torch", True, "Also time PyTorch when installed.")
  _FROZEN = flags.DEFINE_bool("frozen", True,
                              "Add the ResNet-50 case with stem and stages 1-3 frozen.")
  _HUGEPAGES = flags.DEFINE_bool(
      "hugepages", True, "Run the children with GLIBC_TUNABLES=glibc.malloc.hugetlb=1.")
  _XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS for Flax runs.")
  _OUT = flags.DEFINE_string("out", None,
                             "Write OUT.json and OUT.md (a path ending in .json writes the "
                             "JSON only).")
  _WORKER = flags.DEFINE_enum("worker", None, ["flax", "torch", "flax_matmul", "torch_matmul"],
                              "Internal: measure one case in this process.")
  _CASE = flags.DEFINE_string("case", None, "Internal: the case to measure, as JSON.")
  _MATMUL_SIZE = flags.DEFINE_integer("matmul_size", MATMUL_SIZE,
                                      "Side of the square fp32 matmul timed first.")
  _DIGITS = flags.DEFINE_list(
      "digits_methods", list(DIGITS_METHODS),
      "Methods whose digits step (configs/<method>.py:digits, 64 source + 64 target "
      "images) gets a row; PyTorch beside those tljax.reference_torch restates.")
  _DIGITS_STEPS = flags.DEFINE_integer("digits_steps", 30,
                                       "Timed steps of each digits row (after the warm-up).")
  _ADAPT = flags.DEFINE_list(
      "adapt_methods", list(ADAPT_METHODS),
      "Methods whose Office-31 step (configs/<method>.py:office31: ResNet-50, bottleneck, "
      "the method's networks; `batch` source + `batch` target images) gets a row per "
      "--adapt_sizes, fed by the input pipeline from JPEGs; PyTorch beside it, fed by a "
      "DataLoader with TLlib's transforms.")
  _ADAPT_SIZES = flags.DEFINE_list("adapt_sizes", ["112"], "Image sizes of the adaptation rows.")
  _ADAPT_BACKBONE = flags.DEFINE_string("adapt_backbone", ADAPT_BACKBONE,
                                        "Backbone of the adaptation rows (a ResNet).")
  _ADAPT_IMAGES = flags.DEFINE_integer(
      "adapt_images", 124, "JPEGs written per domain (300 px, Office-31's 31 classes) for the "
      "adaptation rows; the pipelines cycle over them.")
  _ADAPT_THREADS = flags.DEFINE_integer(
      "adapt_threads", min(8, os.cpu_count() or 1),
      "Input pipeline parallelism of the adaptation rows: tljax's reader threads "
      "(config.data.num_threads), PyTorch's DataLoader worker processes.")
  _ADAPT_DIR = flags.DEFINE_string(
      "adapt_dir", None, "Folder for the adaptation rows' JPEGs and their TFDS build (reused "
      "when it has them); default: a temporary folder, removed afterwards.")


NUM_CLASSES = 1000
MATMUL_SIZE = 4096
# The digits rows by default: every method with a digits config, baselines first.
DIGITS_METHODS = ("source_only", "source_only_joint_bn", "dann", "cdan", "cdan_mcc", "mdd", "bsp",
                  "dan", "jan", "mcc", "afn", "ddc", "deep_coral", "cmd", "entropy_min", "bnm",
                  "mcd", "adda", "dsan", "pseudo_label", "mean_teacher", "fixmatch", "shot")
DIGITS_BATCH = 64
# The adaptation rows by default: ERM (the source batch alone), then the
# ResNet-50 DA steps the GPU table reports.
ADAPT_METHODS = ("source_only", "dan", "dann", "cdan")
ADAPT_BACKBONE = "resnet50"
OFFICE31_CLASSES = 31
_RESULT_PREFIX = "BENCH_RESULT "
# PyTorch module prefixes frozen in the frozen-backbone case, and the matching
# Flax parameter paths: torchvision's stem and stages 1-3.
FROZEN_STAGES_TORCH = ("conv1", "bn1", "layer1", "layer2", "layer3")
FROZEN_STAGES_REGEX = r"backbone/(conv1|bn1|layer[1-3]_\d+)(/.*)?"


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of the table.

  Attributes:
    kind: key of `ROW_KINDS` (how to build and time the step).
    model: backbone registry name.
    size: square image size.
    batch: images per step.
    frozen: regex over '/'-joined Flax parameter paths that are frozen (and
      whose BatchNorm layers use running statistics); empty for none.
    label: the row's name in the table.
    method: kind 'adapt': the method whose `office31` config is timed.
  """

  kind: str
  model: str
  size: int
  batch: int
  frozen: str = ""
  label: str = ""
  method: str = ""

  @property
  def name(self) -> str:
    return self.label or self.model


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _summary(step_seconds: list[float], cpu_seconds: list[float],
             batch: int) -> dict[str, float]:
  median = statistics.median(step_seconds)
  return {"step_s": median, "step_min_s": min(step_seconds),
          "images_per_s": batch / median, "cpu_s": statistics.median(cpu_seconds)}


def _timed_loop(step: Callable[[], Any], steps: int, warmup: int,
                cpu_clock: Callable[[], float] = time.process_time
                ) -> tuple[list[float], list[float]]:
  """Wall and CPU seconds (`cpu_clock`: this process's by default) of each of
  `steps` calls of `step` (which waits for its own result), after `warmup`
  untimed ones."""
  step_seconds, cpu_seconds = [], []
  for index in range(warmup + steps):
    start, cpu_start = time.perf_counter(), cpu_clock()
    step()
    if index >= warmup:
      step_seconds.append(time.perf_counter() - start)
      cpu_seconds.append(cpu_clock() - cpu_start)
  return step_seconds, cpu_seconds


def _xla_flops(compiled, devices: int = 1) -> float:
  """XLA's cost analysis of a compiled step: its FLOPs (0 when not reported).
  A step partitioned over `devices` reports one device's share: times `devices`."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return devices * float(cost.get("flops", 0.0))


def _flax_result(dtype: str, compile_s: float, summary: dict[str, float],
                 flops: float) -> dict[str, Any]:
  """A Flax row: timings, FLOPs and the peak memory of this process's device."""
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.devices()[0].memory_stats() or {}
  return {"framework": "flax", "dtype": dtype, "compile_s": compile_s, **summary,
          "flops": flops, "gflops_per_s": flops / summary["step_s"] / 1e9,
          "peak_bytes": stats.get("peak_bytes_in_use", _peak_rss_bytes()),
          "peak_source": "device" if "peak_bytes_in_use" in stats else "rss",
          "device": str(jax.devices()[0]), "backend": jax.default_backend(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


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


def split_frozen(params: Any, frozen: str) -> tuple[Any, Any]:
  """`(trainable, frozen)` flat dicts of '/'-joined parameter paths."""
  import re  # pylint: disable=g-import-not-at-top

  import flax.traverse_util  # pylint: disable=g-import-not-at-top

  flat = flax.traverse_util.flatten_dict(params, sep="/")
  is_frozen = {key: bool(frozen) and re.fullmatch(frozen, key) is not None for key in flat}
  return ({key: value for key, value in flat.items() if not is_frozen[key]},
          {key: value for key, value in flat.items() if is_frozen[key]})


def build_flax_step(case: Case, dtype: str = "float32"):
  """The jitted backbone train step of `case` and its arguments.

  Returns `(step, state, images, labels)`; `step(state, images, labels)`
  returns `(state, loss)` and donates `state`. With `case.frozen`, the
  gradient is taken w.r.t. the trainable parameters only, the frozen ones
  being constants of the loss, so XLA never builds their backward pass.
  """
  import flax.traverse_util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from tljax import models  # pylint: disable=g-import-not-at-top

  kwargs = {"image_size": case.size} if case.model.startswith("vit_") else {}
  compute_dtype = jnp.dtype(dtype)
  frozen_norm = case.frozen
  classifier = models.Classifier(
      models.get_backbone(case.model, dtype=compute_dtype, frozen_norm=frozen_norm, **kwargs),
      num_classes=NUM_CLASSES, dtype=compute_dtype)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(case.batch, case.size, case.size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(case.batch,)))
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


def time_flax(case: Case, steps: int, warmup: int, dtype: str = "float32") -> dict[str, Any]:
  """Compiles and times the Flax train step; returns timings, FLOPs and peak memory."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  step, state, images, labels = build_flax_step(case, dtype)
  start = time.perf_counter()
  compiled = step.lower(state, images, labels).compile()
  compile_s = time.perf_counter() - start
  carry = {"state": state}

  def one_step():
    carry["state"], carry["loss"] = compiled(carry["state"], images, labels)
    carry["loss"].block_until_ready()

  summary = _summary(*_timed_loop(one_step, steps, warmup), case.batch)
  loss = float(carry["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"{case.name}: non-finite loss {loss}")
  return _flax_result(dtype, compile_s, summary, _xla_flops(compiled))


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


def time_torch(case: Case, steps: int, warmup: int, dtype: str = "float32") -> dict[str, Any]:
  """Times the same train step in PyTorch (eager); counts its FLOPs once."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  network = _torch_model(case.model, case.size).to(device).train()
  if case.frozen:
    for name, module in network.named_children():
      if name in FROZEN_STAGES_TORCH:
        module.eval()  # running statistics in the frozen BatchNorm layers
        for parameter in module.parameters():
          parameter.requires_grad_(False)
  images = torch.randn(case.batch, 3, case.size, case.size, device=device)
  labels = torch.randint(0, NUM_CLASSES, (case.batch,), device=device)
  optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.01,
                              momentum=0.9)
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16" and device == "cuda")
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(network(images), labels)
    loss.backward()
    optimizer.step()

  with FlopCounterMode(display=False) as counter:
    train_step()  # untimed: the counter slows the step down
  flops = float(counter.get_total_flops())

  def synchronized_step():
    train_step()
    synchronize()

  synchronize()
  summary = _summary(*_timed_loop(synchronized_step, steps, warmup), case.batch)
  peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes())
  return {"framework": "torch",
          "dtype": "bfloat16" if dtype == "bfloat16" and device == "cuda" else "float32",
          **summary,
          "flops": flops, "gflops_per_s": flops / summary["step_s"] / 1e9,
          "peak_bytes": peak, "peak_source": "device" if device == "cuda" else "rss",
          "threads": torch.get_num_threads(), "device": device}


# ----------------------------------------------------------------------------
# The digits step of each method (kind 'digits': `Case.model` is the method).
# ----------------------------------------------------------------------------

DIGITS_CLASSES = 10
DIGITS_IMAGE = (28, 28, 3)


def _digits_config(method: str, batch: int):
  import importlib  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f"configs.{method}").get_config("digits")
  config.batch_size = batch
  return config


def flax_digits_step(case: Case, dtype: str = "float32") -> tuple[Callable[[], Any], Any, int, float]:
  """`(step, compiled, images per step, compile seconds)`: one call of `step`
  runs the method's jitted train step (`configs/<method>.py:digits`, tljax's
  trainer) on fixed synthetic batches of `case.batch` source + target images,
  carrying the state, and returns its metrics."""
  from tljax import bench as config_bench  # pylint: disable=g-import-not-at-top

  config = _digits_config(case.model, case.batch)
  if dtype != "float32":
    config.model.dtype = dtype
  _, compiled, state, batch, compile_s = config_bench.prepare_train_step(
      config, num_classes=DIGITS_CLASSES)
  carry = {"state": state}

  def step():
    carry["state"], metrics = compiled(carry["state"], batch)
    return metrics

  return step, compiled, config_bench.images_per_step(batch), compile_s


def time_flax_digits(case: Case, steps: int, warmup: int, dtype: str = "float32") -> dict[str, Any]:
  """The method's jitted train step (`flax_digits_step`)."""
  import jax  # pylint: disable=g-import-not-at-top

  step, compiled, images, compile_s = flax_digits_step(case, dtype)
  summary = _summary(*_timed_loop(lambda: jax.block_until_ready(step()), steps, warmup), images)
  return _flax_result(dtype, compile_s, summary, _xla_flops(compiled, jax.device_count()))


def torch_method_supported(name: str) -> bool:
  """Whether `tljax.reference_torch` restates the step of the method named
  `name` (a config's `method.name`): TLlib's ERM and the sums of its DANN, CDAN,
  MDD, DAN, JAN, MCC, AFN and BSP terms."""
  from tljax.reference_torch import TERMS  # pylint: disable=g-import-not-at-top

  return name == "source_only" or all(term in TERMS for term in name.split("+"))


def torch_digits_supported(method: str) -> bool:
  """`torch_method_supported` for `configs/<method>.py:digits`."""
  return torch_method_supported(_digits_config(method, 2).method.name)


def _torch_device():
  """`(device, synchronize)`: CUDA when PyTorch sees a GPU, else the CPU."""
  import torch  # pylint: disable=g-import-not-at-top

  if torch.cuda.is_available():
    return "cuda", torch.cuda.synchronize
  return "cpu", lambda: None


def _torch_autocast(device: str, dtype: str):
  """bf16 autocast on CUDA for `dtype='bfloat16'`; fp32 otherwise (and on CPU)."""
  import torch  # pylint: disable=g-import-not-at-top

  return torch.autocast(device, dtype=torch.bfloat16,
                        enabled=dtype == "bfloat16" and device == "cuda")


def _torch_reference(config, image: tuple[int, int, int], num_classes: int, device: str):
  """`(reference, optimizer, scheduler, source_only)` of a tljax config's TLlib
  example (`tljax.reference_torch.Reference`) on `device`, fp32 parameters,
  in its adaptation phase (a method with source pre-training is timed after it)."""
  import torch  # pylint: disable=g-import-not-at-top

  from tljax.reference_torch import Reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  source_only = config.method.name == "source_only"
  reference = Reference(config, None, num_classes=num_classes, image=image,
                        afn_optimizer=config.method.name == "afn", source_only=source_only,
                        dtype=torch.float32)
  reference.world.to(device)
  optimizer, scheduler = reference.optimizer(config.optimizer.learning_rate,
                                             extra=not source_only)
  return reference, optimizer, scheduler, source_only


def _torch_update(reference, optimizer, scheduler, source_only, autocast, x_s, labels, x_t):
  """One TLlib iteration: forward, loss, backward, SGD step, scheduler step."""
  reference.train_mode()
  optimizer.zero_grad(set_to_none=True)
  with autocast:
    loss = (reference.source_only_loss(x_s, labels) if source_only
            else reference.adaptation_loss(x_s, labels, x_t))
  loss.backward()
  optimizer.step()
  if scheduler is not None:
    scheduler.step()


def torch_digits_step(case: Case, dtype: str = "float32") -> tuple[Callable[[], None], bool]:
  """`(step, source_only)`: one call of `step` is the method's digits train step
  in PyTorch, the network, losses, optimizer groups and schedule of TLlib's
  example (`tljax.reference_torch.Reference`), on fixed random batches, on the
  GPU when there is one (bf16 autocast there for `dtype='bfloat16'`); it waits
  for the device."""
  import torch  # pylint: disable=g-import-not-at-top

  device, synchronize = _torch_device()
  config = _digits_config(case.model, case.batch)
  reference, optimizer, scheduler, source_only = _torch_reference(
      config, DIGITS_IMAGE, DIGITS_CLASSES, device)
  shape = (case.batch, DIGITS_IMAGE[2], *DIGITS_IMAGE[:2])
  x_s, x_t = torch.randn(shape, device=device), torch.randn(shape, device=device)
  labels = torch.randint(0, DIGITS_CLASSES, (case.batch,), device=device)
  autocast = _torch_autocast(device, dtype)

  def step():
    _torch_update(reference, optimizer, scheduler, source_only, autocast, x_s, labels, x_t)
    synchronize()

  return step, source_only


def _torch_result(step: Callable[[], None], steps: int, warmup: int, dtype: str, images: int,
                  cpu_clock: Callable[[], float] = time.process_time) -> dict[str, Any]:
  """Counts one call's FLOPs, times the others; the row's PyTorch figures."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  device, _ = _torch_device()
  with FlopCounterMode(display=False) as counter:
    step()  # untimed: the counter slows the step down
  flops = float(counter.get_total_flops())
  summary = _summary(*_timed_loop(step, steps, warmup, cpu_clock), images)
  peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
  return {"framework": "torch",
          "dtype": "bfloat16" if dtype == "bfloat16" and device == "cuda" else "float32",
          **summary, "flops": flops, "gflops_per_s": flops / summary["step_s"] / 1e9,
          "peak_bytes": peak, "peak_source": "device" if device == "cuda" else "rss",
          "threads": torch.get_num_threads(), "device": device}


def time_torch_digits(case: Case, steps: int, warmup: int, dtype: str = "float32") -> dict[str, Any]:
  """The same step in PyTorch (`torch_digits_step`)."""
  step, source_only = torch_digits_step(case, dtype)
  return _torch_result(step, steps, warmup, dtype,
                       case.batch if source_only else 2 * case.batch)


# ----------------------------------------------------------------------------
# Adaptation steps on Office-31-sized images, input pipeline included (kind
# 'adapt': `Case.model` is the backbone, `Case.method` the method).
# ----------------------------------------------------------------------------

ADAPT_IMAGE_SIDE = 300  # Office-31's Amazon images are 300 x 300


def write_adapt_data(data_dir: str, config, num_images: int) -> None:
  """JPEGs in Office-31's layout under `data_dir/office31/` for the config's
  source and target domains (`tljax.data.bench.write_office31_like`), unless
  already there."""
  from tljax.data import bench as data_bench  # pylint: disable=g-import-not-at-top

  for seed, name in enumerate((config.source, config.target)):
    domain = name.split("/", 1)[1]
    if not os.path.isdir(os.path.join(data_dir, "office31", domain)):
      data_bench.write_office31_like(os.path.join(data_dir, "office31"), num_images,
                                     ADAPT_IMAGE_SIDE, seed=seed, domain=domain)


def adapt_config(case: Case, data_dir: str, threads: int):
  """`configs/<case.method>.py:office31` for `case`: its backbone (random
  weights: a step's cost does not depend on them), image size and batch, the
  JPEGs of `data_dir`, `threads` reader threads."""
  import importlib  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f"configs.{case.method}").get_config("office31")
  config.model.name = case.model
  config.model.init = ""
  config.data.image_size = case.size
  config.batch_size = case.batch
  config.manual_dir = os.path.join(data_dir, "office31")
  config.data_dir = os.path.join(data_dir, "tfds")
  config.data.num_threads = threads
  return config


def flax_adapt_step(case: Case, dtype: str = "float32", *, data_dir: str, threads: int
                    ) -> tuple[Callable[[], Any], Any, int, float]:
  """`(step, compiled, images per step, compile seconds)`: one call of `step`
  takes the next batch from the trainer's input pipeline (`train.train_batches`:
  JPEG decoding, TLlib's random resized crop and flip, `threads` threads,
  prefetched onto the devices) and runs the method's jitted train step on it."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

  from tljax import bench as config_bench  # pylint: disable=g-import-not-at-top
  from tljax import train  # pylint: disable=g-import-not-at-top

  config = adapt_config(case, data_dir, threads)
  if dtype != "float32":
    config.model.dtype = dtype
  mesh = config_bench.data_mesh()
  # The trainer's own data path (pylint: protected-access on purpose: the same code).
  domains = train.open_data(config, data_dir)
  setup = train.build(config, domains.num_classes, mesh, domains.input_shape,
                      num_target_examples=len(domains.target_train))
  batches = train.train_batches(
      config, domains, setup.method, 0, NamedSharding(mesh, PartitionSpec("data")))
  first = next(batches)
  compiled, compile_s = config_bench.compile_last_phase(setup, setup.state, first)
  carry = {"state": setup.state}

  def step():
    carry["state"], metrics = compiled(carry["state"], next(batches))
    return metrics

  return step, compiled, config_bench.images_per_step(first), compile_s


def time_flax_adapt(case: Case, steps: int, warmup: int, dtype: str = "float32", *,
                    data_dir: str, threads: int) -> dict[str, Any]:
  """`flax_adapt_step`, timed; CPU seconds include the reader threads."""
  import jax  # pylint: disable=g-import-not-at-top

  from tljax import cpu_time  # pylint: disable=g-import-not-at-top

  step, compiled, images, compile_s = flax_adapt_step(case, dtype, data_dir=data_dir,
                                                      threads=threads)
  summary = _summary(*_timed_loop(lambda: jax.block_until_ready(step()), steps, warmup,
                                  cpu_time.cpu_seconds), images)
  return _flax_result(dtype, compile_s, summary, _xla_flops(compiled, jax.device_count()))


def torch_adapt_step(case: Case, dtype: str = "float32", *, data_dir: str, threads: int
                     ) -> tuple[Callable[[], None], bool]:
  """`(step, source_only)`: the same iteration as TLlib's Office-31 example: one
  batch per domain from a `DataLoader` over an `ImageFolder` with TLlib's
  training transform (`reference_torch.tllib_train_transform`), `threads`
  worker processes, moved to the device, then the step of `torch_digits_step`
  with torchvision's backbone."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  from tljax.reference_torch import tllib_train_transform  # pylint: disable=g-import-not-at-top

  device, synchronize = _torch_device()
  config = adapt_config(case, data_dir, threads)
  reference, optimizer, scheduler, source_only = _torch_reference(
      config, (case.size, case.size, 3), OFFICE31_CLASSES, device)
  transform = tllib_train_transform(case.size)

  def batches(name: str, seed: int):
    folder = os.path.join(data_dir, "office31", name.split("/", 1)[1], "images")
    loader = torch.utils.data.DataLoader(
        torchvision.datasets.ImageFolder(folder, transform), batch_size=case.batch,
        shuffle=True, drop_last=True, num_workers=threads, pin_memory=device == "cuda",
        persistent_workers=threads > 0, generator=torch.Generator().manual_seed(seed))
    while True:  # TLlib's ForeverDataIterator
      for images, labels in loader:
        yield (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))

  source = batches(config.source, 0)
  target = None if source_only else batches(config.target, 1)
  autocast = _torch_autocast(device, dtype)

  def step():
    x_s, labels = next(source)
    x_t = None if target is None else next(target)[0]
    _torch_update(reference, optimizer, scheduler, source_only, autocast, x_s, labels, x_t)
    synchronize()

  return step, source_only


def time_torch_adapt(case: Case, steps: int, warmup: int, dtype: str = "float32", *,
                     data_dir: str, threads: int) -> dict[str, Any]:
  """`torch_adapt_step`, timed; CPU seconds include the DataLoader workers."""
  from tljax import cpu_time  # pylint: disable=g-import-not-at-top

  step, source_only = torch_adapt_step(case, dtype, data_dir=data_dir, threads=threads)
  return _torch_result(step, steps, warmup, dtype,
                       case.batch if source_only else 2 * case.batch, cpu_time.cpu_seconds)


def time_matmul(framework: str, size: int = MATMUL_SIZE, repeats: int = 3) -> dict[str, Any]:
  """GFLOP/s of a `size x size` fp32 matmul: jitted in JAX, eager in PyTorch."""
  flops = 2.0 * size**3
  if framework == "flax":
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(key, (size, size), jnp.float32) for key in keys)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()

    def run():
      matmul(a, b).block_until_ready()
  else:
    import torch  # pylint: disable=g-import-not-at-top

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
      torch.matmul(a, b)
      synchronize()

  run()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  return {"framework": framework, "size": size, "seconds": min(seconds),
          "gflops_per_s": flops / min(seconds) / 1e9}


# kind -> (Flax timer, PyTorch timer or None); each takes (case, steps, warmup, dtype).
ROW_KINDS: dict[str, tuple[Callable[..., dict[str, Any]],
                           Callable[..., dict[str, Any]] | None]] = {
    "backbone": (time_flax, time_torch),
    "digits": (time_flax_digits, time_torch_digits),
    "adapt": (time_flax_adapt, time_torch_adapt),  # + data_dir, threads
}


def default_cases(models: Sequence[str], sizes: Sequence[int], batch: int,
                  frozen: bool, digits_methods: Sequence[str] = (),
                  adapt_methods: Sequence[str] = (), adapt_sizes: Sequence[int] = (),
                  adapt_backbone: str = ADAPT_BACKBONE) -> list[Case]:
  """The backbone rows, the frozen ResNet-50 rows, one digits row per method,
  then the ResNet-50 adaptation rows (method x size, `batch` per domain)."""
  cases = [Case("backbone", model, size, batch) for model in models for size in sizes]
  if frozen:
    cases += [Case("backbone", "resnet50", size, batch, frozen=FROZEN_STAGES_REGEX,
                   label="resnet50 frozen 1-3") for size in sizes]
  cases += [Case("digits", method, DIGITS_IMAGE[0], DIGITS_BATCH, label=f"digits {method}")
            for method in digits_methods]
  cases += [Case("adapt", adapt_backbone, size, batch, method=method,
                 label=f"{adapt_backbone} {method} + pipeline")
            for size in adapt_sizes for method in adapt_methods]
  return cases


def _child_env(framework: str) -> dict[str, str]:
  env = dict(os.environ)
  if _HUGEPAGES.value:
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
      env["GLIBC_TUNABLES"] = ":".join(tunables + ["glibc.malloc.hugetlb=1"])
  if framework.startswith("flax") and _XLA_FLAGS.value:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()
  return env


def _run_worker(worker: str, case: Case | None = None,
                adapt_dir: str | None = None) -> dict[str, Any]:
  """Measures one case (or the matmul) in a fresh interpreter (`adapt_dir`: the
  JPEGs of the adaptation rows)."""
  steps = _DIGITS_STEPS.value if case is not None and case.kind == "digits" else _STEPS.value
  command = [sys.executable, "-m", "tljax.models.bench", f"--worker={worker}",
             f"--steps={steps}", f"--warmup={_WARMUP.value}", f"--dtype={_DTYPE.value}",
             f"--matmul_size={_MATMUL_SIZE.value}"]
  if case is not None:
    command.append(f"--case={json.dumps(dataclasses.asdict(case))}")
  if case is not None and case.kind == "adapt":
    command += [f"--adapt_dir={adapt_dir}", f"--adapt_threads={_ADAPT_THREADS.value}"]
  result = subprocess.run(command, capture_output=True, text=True, env=_child_env(worker),
                          check=False)
  for line in result.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX):])
  what = f"{case.name}@{case.size}" if case else "matmul"
  raise RuntimeError(f"{worker} benchmark of {what} failed:\n{result.stderr[-4000:]}")


def _fraction(result: dict[str, Any] | None, matmul: dict[str, Any]) -> str:
  if not result or not matmul.get("flax"):
    return "-"
  return f"{100 * result['gflops_per_s'] / matmul['flax']['gflops_per_s']:.0f}%"


def format_table(rows: list[dict[str, Any]], matmul: dict[str, Any]) -> str:
  """A markdown table, one line per row; PyTorch columns show '-' when absent."""
  header = ("| case | size | batch | flax s/step | cpu s | GFLOP/s | % mm | compile s | peak GB "
            "| torch s/step | cpu s | GFLOP/s | % mm | peak GB | flax/torch |")
  lines = [header, "|" + "---|" * (header.count("|") - 1)]
  for row in rows:
    flax_result, torch_result = row["flax"], row.get("torch")
    cells = [row["case"], str(row["size"]), str(row["batch"]),
             f"{flax_result['step_s']:.3f}", f"{flax_result['cpu_s']:.2f}",
             f"{flax_result['gflops_per_s']:.1f}", _fraction(flax_result, matmul),
             f"{flax_result['compile_s']:.1f}", f"{flax_result['peak_bytes'] / 1e9:.2f}"]
    if torch_result:
      cells += [f"{torch_result['step_s']:.3f}", f"{torch_result['cpu_s']:.2f}",
                f"{torch_result['gflops_per_s']:.1f}", _fraction(torch_result, matmul),
                f"{torch_result['peak_bytes'] / 1e9:.2f}",
                f"{flax_result['step_s'] / torch_result['step_s']:.2f}"]
    else:
      cells += ["-"] * 6
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_matmul(matmul: dict[str, Any]) -> str:
  parts = [f"{name}: {result['gflops_per_s']:.0f} GFLOP/s "
           f"({result['size']}x{result['size']} fp32 in {result['seconds']:.3f} s)"
           for name, result in (("jitted JAX", matmul.get("flax")),
                                ("PyTorch", matmul.get("torch"))) if result]
  return "Matmul rate: " + "; ".join(parts)


def _machine() -> dict[str, Any]:
  model = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version()}


def _markdown(report: dict[str, Any], command: str) -> str:
  machine = report["machine"]
  return "\n".join([
      "## Train step: Flax vs PyTorch",
      "",
      f"`{command}`",
      "",
      f"{report['date']}; {machine['cpu']}, {machine['cpu_count']} CPUs; load average "
      f"{report['load_before']} before, {report['load_after']} after; dtype "
      f"{report['dtype']}; GLIBC_TUNABLES={report['glibc_tunables'] or '(unset)'}; "
      f"XLA_FLAGS={report['xla_flags'] or '(unset)'}.",
      "",
      format_matmul(report["matmul"]) + ".",
      "",
      "Forward, backward and SGD-momentum update of the backbone plus a 1000-class linear "
      "head on random images; median of the timed steps. `cpu s`: process CPU time per "
      "step. `GFLOP/s`: Flax, XLA's cost analysis of the compiled step; PyTorch, "
      "`FlopCounterMode` over one step (matmuls, convolutions, attention). `% mm`: of the "
      "jitted matmul rate above. `peak GB`: the process's peak RSS on CPU. `frozen 1-3`: "
      "stem and stages 1-3 frozen (no gradient, BatchNorm on running statistics). "
      "`digits <method>`: the method's whole train step on the digits task (small CNN, "
      "`batch` source + `batch` target 28-px images), tljax's trainer against the same step "
      "in PyTorch written from TLlib's example (`tljax/reference_torch.py`), `-` where no "
      "PyTorch restatement exists. `<backbone> <method> + pipeline`: the method's "
      "Office-31 step (`configs/<method>.py:office31`, random weights, `batch` source + "
      "`batch` target images) fed by the input pipeline from 300-px JPEGs: tljax's trainer "
      "and reader threads against TLlib's example with a `DataLoader` (TLlib's transforms, "
      "as many workers as tljax has threads); their `cpu s` include the pipeline. Raw "
      "figures: the `.json` beside this file.",
      "",
      format_table(report["rows"], report["matmul"]),
      "",
  ])


def _torch_supported(case: Case) -> bool:
  if ROW_KINDS[case.kind][1] is None:
    return False
  if case.kind == "digits":
    return torch_digits_supported(case.model)
  if case.kind == "adapt":
    return torch_method_supported(adapt_config(case, "", 0).method.name)
  return True


def _run_cases(cases: Sequence[Case], with_torch: bool,
               adapt_dir: str | None) -> list[dict[str, Any]]:
  rows = []
  for case in cases:
    row = {"case": case.name, "model": case.model, "size": case.size, "batch": case.batch,
           "kind": case.kind, "frozen": case.frozen, "method": case.method,
           "flax": _run_worker("flax", case, adapt_dir)}
    if with_torch and _torch_supported(case):
      row["torch"] = _run_worker("torch", case, adapt_dir)
    rows.append(row)
    print(f"done: {case.name}@{case.size}px", flush=True)
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKER.value:
    if _WORKER.value.endswith("_matmul"):
      result = time_matmul(_WORKER.value.split("_")[0], _MATMUL_SIZE.value)
    else:
      case = Case(**json.loads(_CASE.value))
      flax_timer, torch_timer = ROW_KINDS[case.kind]
      timer = flax_timer if _WORKER.value == "flax" else torch_timer
      if case.kind == "adapt":
        timer = functools.partial(timer, data_dir=_ADAPT_DIR.value,
                                  threads=_ADAPT_THREADS.value)
      result = timer(case, _STEPS.value, _WARMUP.value, _DTYPE.value)
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return

  with_torch = _TORCH.value
  if with_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("PyTorch is not installed: timing Flax only.")
      with_torch = False
  load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  matmul = {"flax": _run_worker("flax_matmul")}
  if with_torch:
    matmul["torch"] = _run_worker("torch_matmul")
  print(format_matmul(matmul), flush=True)
  sizes = [int(size) for size in _SIZES.value]
  cases = default_cases(_MODELS.value, sizes, _BATCH.value, _FROZEN.value, _DIGITS.value,
                        _ADAPT.value, [int(size) for size in _ADAPT_SIZES.value],
                        _ADAPT_BACKBONE.value)
  with contextlib.ExitStack() as stack:
    adapt_dir = _ADAPT_DIR.value
    if any(case.kind == "adapt" for case in cases):
      if not adapt_dir:
        adapt_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tljax_bench_"))
      for case in cases:
        if case.kind == "adapt":
          write_adapt_data(adapt_dir, adapt_config(case, adapt_dir, 1), _ADAPT_IMAGES.value)
    rows = _run_cases(cases, with_torch, adapt_dir)
  report = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
            "machine": _machine(), "load_before": load_before,
            "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
            "dtype": _DTYPE.value, "steps": _STEPS.value, "warmup": _WARMUP.value,
            "glibc_tunables": _child_env("flax").get("GLIBC_TUNABLES", ""),
            "xla_flags": _child_env("flax").get("XLA_FLAGS", ""),
            "matmul": matmul, "rows": rows}
  print(format_table(rows, matmul))
  if _OUT.value:
    base = _OUT.value[:-len(".json")] if _OUT.value.endswith(".json") else _OUT.value
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    with open(base + ".json", "w") as f:
      json.dump(report, f, indent=2)
    if not _OUT.value.endswith(".json"):
      command = "python -m tljax.models.bench " + " ".join(argv_flags())
      with open(base + ".md", "w") as f:
        f.write(_markdown(report, command))


def argv_flags() -> list[str]:
  """The flags this run was given, for the report's command line."""
  return [arg for arg in sys.argv[1:] if arg.startswith("--")]


if __name__ == "__main__":
  _define_flags()
  app.run(main)
