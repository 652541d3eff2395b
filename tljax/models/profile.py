r"""Where a backbone train step spends its time, by kind of op: Flax and PyTorch.

  taskset -c 0 python -m tljax.models.profile --model=resnet50 --size=112 --batch=16

Flax: one step of `tljax.models.bench`'s train step runs under
`jax.profiler`; every XLA:CPU thunk of the trace is matched to its instruction
in the compiled HLO and put in a category: convolution forward / input
gradient / kernel gradient, matmul forward / backward (batched = attention),
BatchNorm, LayerNorm, softmax, GELU, max pooling, copies and transposes,
optimizer. Forward means "an ancestor of the loss" in the HLO graph; a
convolution whose output has a kernel's shape is a kernel gradient; the
library column says whether YNNPACK ran it or XLA's own code. PyTorch:
`torch.profiler` self CPU time per aten op, grouped the same way.

Times are summed wall times of the thunks (ops): with two threads two ops may
overlap, and on a loaded machine an op's wall time includes time the thread
was descheduled. Pinning to one core (`taskset -c 0`) makes the shares the
shares of the work. Only the shares are comparable across frameworks.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from typing import Any, Sequence

from absl import app
from absl import flags

_MODEL = None
_SIZE = None
_BATCH = None
_DTYPE = None
_TORCH = None
_TOP = None


def _define_flags() -> None:
  """Defines the command-line flags; called only when run as a program."""
  global _MODEL, _SIZE, _BATCH, _DTYPE, _TORCH, _TOP
  _MODEL = flags.DEFINE_string("model", "resnet50", "Backbone registry name.")
  _SIZE = flags.DEFINE_integer("size", 112, "Square image size.")
  _BATCH = flags.DEFINE_integer("batch", 16, "Images per step.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Flax compute dtype.")
  _TORCH = flags.DEFINE_bool("torch", True, "Also profile the PyTorch step.")
  _TOP = flags.DEFINE_integer("top", 0, "Also list the N slowest ops of each Flax category.")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_COPY_OPS = {"transpose", "copy", "bitcast", "parameter", "reshape", "slice", "pad",
             "concatenate", "broadcast", "reverse", "opt-barrier", "tuple",
             "get-tuple-element", "fusion"}


def parse_hlo(text: str) -> tuple[dict[str, list[dict[str, Any]]], str]:
  """Computations of an HLO module's text: name -> instructions, and the entry's name."""
  computations: dict[str, list[dict[str, Any]]] = {}
  current, entry = None, ""
  for line in text.splitlines():
    if line and not line.startswith(" ") and "{" in line and (
        "->" in line or line.startswith("ENTRY")):
      is_entry = line.startswith("ENTRY")
      name = line.split()[1 if is_entry else 0].lstrip("%")
      current = computations.setdefault(name, [])
      entry = name if is_entry else entry
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      name, shape, opcode, rest = match.groups()
      arguments = rest.split("), ")[0] if opcode != "parameter" else ""
      op_name = re.search(r'op_name="([^"]*)"', rest)
      current.append({
          "name": name, "shape": shape, "op": opcode, "line": line,
          "operands": re.findall(r"%([\w.\-]+)", arguments),
          "calls": re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", rest),
          "op_name": op_name.group(1) if op_name else "",
          "library": ("ynn" if "__ynn_fusion" in rest else
                      "xnn" if "__xnn_fusion" in rest else "xla"),
      })
  return computations, entry


def _dims(shape: str) -> tuple[int, ...]:
  found = re.findall(r"\[([\d,]*)\]", shape)
  return tuple(sorted(int(d) for d in found[0].split(",") if d)) if found else ()


class HloCategories:
  """Puts each top-level instruction of a compiled train step in a category."""

  def __init__(self, text: str):
    self.computations, entry = parse_hlo(text)
    self.instructions = {i["name"]: i for i in self.computations[entry]}
    self.kernel_shapes = {
        _dims(i["shape"]) for i in self.computations[entry]
        if i["op"] == "parameter" and "kernel" in i["line"].split("op_name=")[-1]}
    root = next(i for i in self.computations[entry] if i["line"].lstrip().startswith("ROOT"))
    # The step returns (state, loss): the loss is the root tuple's last element.
    self.forward: set[str] = set()
    stack = [root["operands"][-1]]
    while stack:
      name = stack.pop()
      if name not in self.forward and name in self.instructions:
        self.forward.add(name)
        stack.extend(self.instructions[name]["operands"])

  def _inner(self, instruction: dict[str, Any]) -> list[dict[str, Any]]:
    found = [instruction]
    for called in instruction["calls"]:
      for inner in self.computations.get(called, []):
        found.extend(self._inner(inner))
    return found

  def category(self, name: str) -> str | None:
    instruction = self.instructions.get(name)
    if instruction is None:
      return None
    inner = self._inner(instruction)
    ops = {i["op"] for i in inner}
    names = " ".join(i["op_name"] for i in inner)
    forward = name in self.forward
    library = instruction["library"]
    if "convolution" in ops:
      conv = next(i for i in inner if i["op"] == "convolution")
      kind = ("forward" if forward else
              "kernel grad" if _dims(conv["shape"]) in self.kernel_shapes else "input grad")
      return f"conv {kind} ({library})"
    if "dot" in ops:
      dot = next(i for i in inner if i["op"] == "dot")
      batched = " batched" if "lhs_batch_dims" in dot["line"] else ""
      return f"matmul{batched} {'forward' if forward else 'backward'} ({library})"
    if ops & {"reduce-window", "select-and-scatter"}:
      return "max pool"
    if "softmax" in names:
      return "softmax"
    if "LayerNorm" in names or "encoder_norm" in names:
      return "layer norm"
    if re.search(r"/(bn\d*|downsample_bn)/", names):
      return "batch norm " + ("forward" if forward else "backward")
    if "gelu" in names or "erf" in ops:
      return "gelu"
    if ops <= _COPY_OPS:
      return "copy/transpose/pad"
    if "jvp(" not in names and "transpose(" not in names:
      return "optimizer/other"
    return "other elementwise " + ("forward" if forward else "backward")


def profile_flax(model: str, size: int, batch: int, dtype: str = "float32",
                 top: int = 0) -> dict[str, Any]:
  """Category -> (milliseconds, op count) for one Flax train step."""
  import jax  # pylint: disable=g-import-not-at-top

  from tljax.models import bench  # pylint: disable=g-import-not-at-top

  step, state, images, labels = bench.build_flax_step(
      bench.Case("backbone", model, size, batch), dtype)
  compiled = step.lower(state, images, labels).compile()
  categories = HloCategories(compiled.as_text())
  state, loss = compiled(state, images, labels)
  loss.block_until_ready()
  start, cpu_start = time.perf_counter(), time.process_time()
  state, loss = compiled(state, images, labels)
  loss.block_until_ready()
  step_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory)
    state, loss = compiled(state, images, labels)
    loss.block_until_ready()
    jax.profiler.stop_trace()
    trace = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[-1]
    data = jax.profiler.ProfileData.from_file(trace)
    durations: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          durations[event.name] += event.duration_ns
  totals: collections.Counter[str] = collections.Counter()
  counts: collections.Counter[str] = collections.Counter()
  slowest = collections.defaultdict(list)
  for name, nanoseconds in durations.items():
    category = categories.category(name)
    if category:
      totals[category] += nanoseconds / 1e6
      counts[category] += 1
      slowest[category].append((nanoseconds / 1e6, name,
                                categories.instructions[name]["shape"].split("{")[0]))
  return {"step_s": step_s, "cpu_s": cpu_s, "ms": dict(totals), "count": dict(counts),
          "slowest": {k: sorted(v, reverse=True)[:top] for k, v in slowest.items()}}


_TORCH_CATEGORIES = (
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


def profile_torch(model: str, size: int, batch: int) -> dict[str, Any]:
  """Category -> self CPU milliseconds of one PyTorch train step."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.profiler import ProfilerActivity  # pylint: disable=g-import-not-at-top

  from tljax.models import bench  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  network = bench._torch_model(model, size).train()  # pylint: disable=protected-access
  images = torch.randn(batch, 3, size, size)
  labels = torch.randint(0, bench.NUM_CLASSES, (batch,))
  optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(network(images), labels).backward()
    optimizer.step()

  train_step()
  start, cpu_start = time.perf_counter(), time.process_time()
  train_step()
  step_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
  with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as profiler:
    train_step()
  totals: collections.Counter[str] = collections.Counter()
  counts: collections.Counter[str] = collections.Counter()
  for event in profiler.key_averages():
    op = event.key.split("::")[-1]
    category = next((c for key, c in _TORCH_CATEGORIES if key in op), "other")
    totals[category] += event.self_cpu_time_total / 1e3
    counts[category] += event.count
  return {"step_s": step_s, "cpu_s": cpu_s, "ms": dict(totals), "count": dict(counts)}


def format_profile(result: dict[str, Any], framework: str) -> str:
  total = sum(result["ms"].values())
  lines = [f"{framework}: step {result['step_s']:.2f} s, {result['cpu_s']:.2f} CPU s; "
           f"{total:.0f} ms in ops", "",
           f"| {framework} category | ms | share | ops |", "|---|---|---|---|"]
  for category, ms in sorted(result["ms"].items(), key=lambda kv: -kv[1]):
    if ms >= 0.002 * total:
      lines.append(f"| {category} | {ms:.0f} | {100 * ms / total:.1f}% | "
                   f"{result['count'][category]} |")
  for category, ops in result.get("slowest", {}).items():
    if ops:
      lines.append(f"\nslowest `{category}`: " + ", ".join(
          f"{name} {shape} {ms:.1f} ms" for ms, name, shape in ops))
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(f"## {_MODEL.value} {_SIZE.value}px batch {_BATCH.value} {_DTYPE.value}\n")
  print(format_profile(profile_flax(_MODEL.value, _SIZE.value, _BATCH.value, _DTYPE.value,
                                    _TOP.value), "flax"))
  if _TORCH.value:
    print()
    print(format_profile(profile_torch(_MODEL.value, _SIZE.value, _BATCH.value), "torch"))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
