"""The PyTorch side of the benchmarks: the same steps as `benchmarks.flax_steps`.

- `time_torch`: a torchvision / timm backbone's train step on random images,
  with the frozen stages' parameters out of the optimizer and their BatchNorm
  layers in eval mode.
- `torch_digits_step` / `torch_adapt_step`: TLlib's example of a method
  (`benchmarks.torch_reference.Reference`: network, losses, parameter groups,
  schedule) on fixed digits batches, or fed by a `DataLoader` with TLlib's
  transforms over JPEGs in Office-31's layout.
- `profile_torch` / `profile_torch_digits`: `torch.profiler`'s self CPU time of
  one step, per category of aten op (`benchmarks.op_profile`).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one
untimed step. On a GPU the steps run on CUDA (bf16 through autocast for
`dtype='bfloat16'`); on a CPU in fp32.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable

import timm
import torch
from torch.profiler import ProfilerActivity
from torch.utils.flop_counter import FlopCounterMode
import torchvision

from benchmarks import cases
from benchmarks import timing
from benchmarks.torch_reference import TERMS, Reference, tllib_train_transform


def torch_model(model: str, size: int) -> torch.nn.Module:
  """The torchvision / timm counterpart of tljax's backbone `model`, with a 1000-class head."""
  if model.startswith(("resnet", "vgg")):
    return getattr(torchvision.models, model)(num_classes=cases.NUM_CLASSES)
  if model == "inception_v3":  # as the Flax backbone's default: no auxiliary head
    return torchvision.models.inception_v3(num_classes=cases.NUM_CLASSES, aux_logits=False,
                                           init_weights=False)
  if model.startswith("vit_"):
    return timm.create_model(f"{model}_224", pretrained=False, img_size=size,
                             num_classes=cases.NUM_CLASSES)
  raise ValueError(f"no PyTorch counterpart for {model!r}")


def _device() -> tuple[str, Callable[[], None]]:
  """`(device, synchronize)`: CUDA when PyTorch sees a GPU, else the CPU."""
  if torch.cuda.is_available():
    return "cuda", torch.cuda.synchronize
  return "cpu", lambda: None


def _autocast(device: str, dtype: str):
  """bf16 autocast on CUDA for `dtype='bfloat16'`; fp32 otherwise (and on CPU)."""
  return torch.autocast(device, dtype=torch.bfloat16,
                        enabled=dtype == "bfloat16" and device == "cuda")


def _result(step: Callable[[], None], steps: int, warmup: int, dtype: str, images: int,
            cpu_clock: Callable[[], float] = time.process_time) -> dict[str, Any]:
  """Counts one call's FLOPs, times the others; the row's PyTorch figures."""
  device, _ = _device()
  with FlopCounterMode(display=False) as counter:
    step()  # untimed: the counter slows the step down
  flops = float(counter.get_total_flops())
  summary = timing.summary(*timing.timed_loop(step, steps, warmup, cpu_clock), images)
  peak = torch.cuda.max_memory_allocated() if device == "cuda" else timing.peak_rss_bytes()
  return {"framework": "torch",
          "dtype": "bfloat16" if dtype == "bfloat16" and device == "cuda" else "float32",
          **summary, "flops": flops, "gflops_per_s": flops / summary["step_s"] / 1e9,
          "peak_bytes": peak, "peak_source": "device" if device == "cuda" else "rss",
          "threads": torch.get_num_threads(), "device": device}


def backbone_step(case: cases.Case, dtype: str = "float32") -> Callable[[], None]:
  """One call is the backbone train step of `case` (SGD with momentum,
  cross-entropy on random images); it waits for the device."""
  torch.manual_seed(0)
  device, synchronize = _device()
  network = torch_model(case.model, case.size).to(device).train()
  if case.frozen:
    for name, module in network.named_children():
      if name in cases.FROZEN_STAGES_TORCH:
        module.eval()  # running statistics in the frozen BatchNorm layers
        for parameter in module.parameters():
          parameter.requires_grad_(False)
  images = torch.randn(case.batch, 3, case.size, case.size, device=device)
  labels = torch.randint(0, cases.NUM_CLASSES, (case.batch,), device=device)
  optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.01,
                              momentum=0.9)
  autocast = _autocast(device, dtype)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(network(images), labels)
    loss.backward()
    optimizer.step()
    synchronize()

  return step


def time_torch(case: cases.Case, steps: int, warmup: int, dtype: str = "float32"
               ) -> dict[str, Any]:
  """Times the backbone train step in PyTorch (eager); counts its FLOPs once."""
  return _result(backbone_step(case, dtype), steps, warmup, dtype, case.batch)


# ----------------------------------------------------------------------------
# A method's step: TLlib's example, restated in `benchmarks.torch_reference`.
# ----------------------------------------------------------------------------


def method_supported(name: str) -> bool:
  """Whether `benchmarks.torch_reference` restates the step of the method
  named `name` (a config's `method.name`): TLlib's ERM and the sums of its
  DANN, CDAN, MDD, DAN, JAN, MCC, AFN and BSP terms."""
  return name == "source_only" or all(term in TERMS for term in name.split("+"))


def digits_supported(method: str) -> bool:
  """`method_supported` for `configs/<method>.py:digits`."""
  return method_supported(cases.digits_config(method, 2).method.name)


def case_supported(case: cases.Case) -> bool:
  """Whether the row `case` has a PyTorch counterpart."""
  if case.kind == "digits":
    return digits_supported(case.model)
  if case.kind == "adapt":
    return method_supported(cases.adapt_config(case, "", 0).method.name)
  return True


def _reference(config, image: tuple[int, int, int], num_classes: int, device: str):
  """`(reference, optimizer, scheduler, source_only)` of a tljax config's TLlib
  example (`torch_reference.Reference`) on `device`, fp32 parameters, in its
  adaptation phase (a method with source pre-training is timed after it)."""
  torch.manual_seed(0)
  source_only = config.method.name == "source_only"
  reference = Reference(config, None, num_classes=num_classes, image=image,
                        afn_optimizer=config.method.name == "afn", source_only=source_only,
                        dtype=torch.float32)
  reference.world.to(device)
  optimizer, scheduler = reference.optimizer(config.optimizer.learning_rate,
                                             extra=not source_only)
  return reference, optimizer, scheduler, source_only


def _update(reference, optimizer, scheduler, source_only, autocast, x_s, labels, x_t):
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


def torch_digits_step(case: cases.Case, dtype: str = "float32"
                      ) -> tuple[Callable[[], None], bool]:
  """`(step, source_only)`: one call of `step` is the method's digits train step
  in PyTorch, the network, losses, optimizer groups and schedule of TLlib's
  example (`torch_reference.Reference`), on fixed random batches, on the
  GPU when there is one (bf16 autocast there for `dtype='bfloat16'`); it waits
  for the device."""
  device, synchronize = _device()
  config = cases.digits_config(case.model, case.batch)
  reference, optimizer, scheduler, source_only = _reference(
      config, cases.DIGITS_IMAGE, cases.DIGITS_CLASSES, device)
  shape = (case.batch, cases.DIGITS_IMAGE[2], *cases.DIGITS_IMAGE[:2])
  x_s, x_t = torch.randn(shape, device=device), torch.randn(shape, device=device)
  labels = torch.randint(0, cases.DIGITS_CLASSES, (case.batch,), device=device)
  autocast = _autocast(device, dtype)

  def step():
    _update(reference, optimizer, scheduler, source_only, autocast, x_s, labels, x_t)
    synchronize()

  return step, source_only


def time_torch_digits(case: cases.Case, steps: int, warmup: int,
                      dtype: str = "float32") -> dict[str, Any]:
  """The same step in PyTorch (`torch_digits_step`)."""
  step, source_only = torch_digits_step(case, dtype)
  return _result(step, steps, warmup, dtype, case.batch if source_only else 2 * case.batch)


def torch_adapt_step(case: cases.Case, dtype: str = "float32", *, data_dir: str, threads: int
                     ) -> tuple[Callable[[], None], bool]:
  """`(step, source_only)`: the same iteration as TLlib's Office-31 example: one
  batch per domain from a `DataLoader` over an `ImageFolder` with TLlib's
  training transform (`torch_reference.tllib_train_transform`), `threads`
  worker processes, moved to the device, then the step of `torch_digits_step`
  with torchvision's backbone."""
  device, synchronize = _device()
  config = cases.adapt_config(case, data_dir, threads)
  reference, optimizer, scheduler, source_only = _reference(
      config, (case.size, case.size, 3), cases.OFFICE31_CLASSES, device)
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
  autocast = _autocast(device, dtype)

  def step():
    x_s, labels = next(source)
    x_t = None if target is None else next(target)[0]
    _update(reference, optimizer, scheduler, source_only, autocast, x_s, labels, x_t)
    synchronize()

  return step, source_only


def time_torch_adapt(case: cases.Case, steps: int, warmup: int, dtype: str = "float32", *,
                     data_dir: str, threads: int) -> dict[str, Any]:
  """`torch_adapt_step`, timed; CPU seconds include the DataLoader workers."""
  step, source_only = torch_adapt_step(case, dtype, data_dir=data_dir, threads=threads)
  return _result(step, steps, warmup, dtype, case.batch if source_only else 2 * case.batch,
                 timing.cpu_seconds)


def time_matmul(size: int = cases.MATMUL_SIZE, repeats: int = 3) -> dict[str, Any]:
  """GFLOP/s of an eager `size x size` fp32 matmul."""
  device, synchronize = _device()
  a, b = (torch.randn(size, size, device=device) for _ in range(2))

  def run():
    torch.matmul(a, b)
    synchronize()

  run()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  return {"framework": "torch", "size": size, "seconds": min(seconds),
          "gflops_per_s": 2.0 * size**3 / min(seconds) / 1e9}


# kind -> the function that times a `Case` of that kind (as `flax_steps.TIMERS`).
TIMERS: dict[str, Callable[..., dict[str, Any]]] = {
    "backbone": time_torch,
    "digits": time_torch_digits,
    "adapt": time_torch_adapt,
}

# ----------------------------------------------------------------------------
# Profiles: self CPU time per kind of aten op.
# ----------------------------------------------------------------------------

# (substring of an aten op's name, category), first match wins.
OP_CATEGORIES = (
    ("convolution_backward", "conv backward (input + kernel grad)"),
    ("convolution", "conv forward"),
    ("batch_norm_backward", "batch norm backward"),
    ("batch_norm", "batch norm forward"),
    ("layer_norm_backward", "layer norm"), ("layer_norm", "layer norm"),
    ("attention", "attention (fused)"),
    ("softmax", "softmax"),
    ("gelu", "gelu"),
    ("max_pool", "max pool"),
    ("threshold_backward", "relu"), ("relu", "relu"), ("clamp", "relu"),
    ("addmm", "matmul"), ("mm", "matmul"), ("bmm", "matmul batched"),
    ("copy_", "copy/transpose"), ("clone", "copy/transpose"), ("contiguous", "copy/transpose"),
    ("add_", "elementwise/optimizer"), ("mul_", "elementwise/optimizer"),
)


def profile_call(train_step: Callable[[], Any], repeats: int = 1) -> dict[str, Any]:
  """Category -> self CPU milliseconds of one call of a PyTorch train step
  (with `repeats` > 1, each op's smallest time over that many calls)."""
  train_step()
  start, cpu_start = time.perf_counter(), time.process_time()
  train_step()
  step_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
  self_ms: dict[str, float] = {}  # per aten op: its smallest total over the profiled calls
  op_counts: dict[str, int] = {}
  for _ in range(max(repeats, 1)):
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as profiler:
      train_step()
    for event in profiler.key_averages():
      ms = event.self_cpu_time_total / 1e3
      self_ms[event.key] = min(self_ms.get(event.key, ms), ms)
      op_counts[event.key] = event.count
  totals: collections.Counter[str] = collections.Counter()
  counts: collections.Counter[str] = collections.Counter()
  for key, ms in self_ms.items():
    op = key.split("::")[-1]
    category = next((c for k, c in OP_CATEGORIES if k in op), "other")
    totals[category] += ms
    counts[category] += op_counts[key]
  return {"step_s": step_s, "cpu_s": cpu_s, "ms": dict(totals), "count": dict(counts)}


def profile_torch(model: str, size: int, batch: int, repeats: int = 1) -> dict[str, Any]:
  """Category -> self CPU milliseconds of one PyTorch backbone train step (on the CPU)."""
  torch.manual_seed(0)
  network = torch_model(model, size).train()
  images = torch.randn(batch, 3, size, size)
  labels = torch.randint(0, cases.NUM_CLASSES, (batch,))
  optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(network(images), labels).backward()
    optimizer.step()

  return profile_call(train_step, repeats)


def profile_torch_digits(method: str, batch: int, repeats: int = 1) -> dict[str, Any]:
  """The same for the method's digits step in PyTorch (`torch_digits_step`)."""
  step, _ = torch_digits_step(cases.Case("digits", method, cases.DIGITS_IMAGE[0], batch))
  return profile_call(step, repeats)
