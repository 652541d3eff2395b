"""Where a train step spends its time, by kind of op: the Flax side and the report.

The library behind `benchmarks.op_profile`. One step of a backbone's train
step (`flax_steps.build_flax_step`) or of a method's digits step
(`flax_steps.flax_digits_step`) runs under `jax.profiler`; every XLA:CPU thunk
of the trace is matched to its instruction in the compiled HLO and put in a
category (`HloCategories`): convolution forward / input gradient / kernel
gradient, matmul forward / backward (batched = attention), BatchNorm,
LayerNorm, softmax, GELU, max pooling, copies and transposes, optimizer.
Forward means "an ancestor of the loss" in the HLO graph; a convolution whose
output has a kernel's shape is a kernel gradient; the library column says
whether YNNPACK ran it or XLA's own code. The PyTorch side, grouped the same
way, is `torch_steps.profile_torch`.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from typing import Any

import jax

from benchmarks import cases
from benchmarks import flax_steps

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


def profile_flax_call(run: Any, hlo_text: str, top: int, repeats: int = 1) -> dict[str, Any]:
  """Category -> (milliseconds, op count) of one call of `run` (a jitted step
  whose compiled HLO is `hlo_text`, returning arrays to wait for); with
  `repeats` > 1, each op's smallest time over that many traced calls (on a
  loaded machine, an op's time otherwise includes time its thread waited)."""
  categories = HloCategories(hlo_text)
  jax.block_until_ready(run())
  start, cpu_start = time.perf_counter(), time.process_time()
  jax.block_until_ready(run())
  step_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
  durations: dict[str, float] = {}  # per op: its smallest time over the traced calls
  for _ in range(max(repeats, 1)):
    with tempfile.TemporaryDirectory() as directory:
      jax.profiler.start_trace(directory)
      jax.block_until_ready(run())
      jax.profiler.stop_trace()
      trace = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[-1]
      data = jax.profiler.ProfileData.from_file(trace)
      call: collections.Counter[str] = collections.Counter()
      for plane in data.planes:
        for line in plane.lines:
          for event in line.events:
            call[event.name] += event.duration_ns
    for name, nanoseconds in call.items():
      durations[name] = min(durations.get(name, nanoseconds), nanoseconds)
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


def profile_flax(model: str, size: int, batch: int, dtype: str = "float32",
                 top: int = 0, repeats: int = 1) -> dict[str, Any]:
  """Category -> (milliseconds, op count) for one Flax backbone train step."""
  step, state, images, labels = flax_steps.build_flax_step(
      cases.Case("backbone", model, size, batch), dtype)
  compiled = step.lower(state, images, labels).compile()
  carry = {"state": state}

  def run():
    carry["state"], loss = compiled(carry["state"], images, labels)
    return loss

  return profile_flax_call(run, compiled.as_text(), top, repeats)


def profile_flax_digits(method: str, batch: int, dtype: str = "float32",
                        top: int = 0, repeats: int = 1) -> dict[str, Any]:
  """The same for a method's whole digits train step (`flax_steps.flax_digits_step`)."""
  case = cases.Case("digits", method, cases.DIGITS_IMAGE[0], batch)
  run, compiled, _, _ = flax_steps.flax_digits_step(case, dtype)
  return profile_flax_call(run, compiled.as_text(), top, repeats)


def format_profile(result: dict[str, Any], framework: str) -> str:
  """A markdown table of a profile (either framework's): milliseconds, share and op
  count per category, categories under 0.2% left out; then the slowest ops."""
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
