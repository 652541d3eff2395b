r"""Train-step benchmark of the backbones: Flax next to PyTorch, in one table.

One step is forward, backward and an SGD-momentum update of a 1000-class
classifier on random images, as in ImageNet training. The command that writes
`experiments/results/backbone_bench.{md,json}`:

  python -m benchmarks.flax_vs_torch --models=resnet50,vit_base_patch16 --sizes=112,224 \
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
   written from TLlib's example (`benchmarks/torch_reference.py`: network, losses,
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

More rows: a row is a `benchmarks.cases.Case`; `flax_steps.TIMERS` and
`torch_steps.TIMERS` map its `kind` to the function that times it in each
framework, so another kind of step is one more entry in each and one more
`Case` in `cases.default_cases`.

Timings on a shared CPU are noisy: look at `cpu s` (process CPU time per step)
as well as wall time, and compare runs made back to back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags

from benchmarks import cases
from benchmarks import office31_like
from benchmarks import timing

_MODELS = flags.DEFINE_list("models", ["resnet50", "vit_base_patch16"], "Backbone registry names.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per step.")
_SIZES = flags.DEFINE_list("sizes", ["112", "224"], "Square image sizes.")
_REMAT = flags.DEFINE_list(
    "remat_models", ["vit_base_patch16"],
    "Backbones also timed with rematerialisation (Flax `remat=True`, a ViT's blocks scanned: "
    "`scan_blocks=True`) beside PyTorch's plain step: the memory rows.")
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
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", cases.MATMUL_SIZE,
                                    "Side of the square fp32 matmul timed first.")
_DIGITS = flags.DEFINE_list(
    "digits_methods", list(cases.DIGITS_METHODS),
    "Methods whose digits step (configs/<method>.py:digits, 64 source + 64 target "
    "images) gets a row; PyTorch beside those benchmarks.torch_reference restates.")
_DIGITS_STEPS = flags.DEFINE_integer("digits_steps", 30,
                                     "Timed steps of each digits row (after the warm-up).")
_ADAPT = flags.DEFINE_list(
    "adapt_methods", list(cases.ADAPT_METHODS),
    "Methods whose Office-31 step (configs/<method>.py:office31: ResNet-50, bottleneck, "
    "the method's networks; `batch` source + `batch` target images) gets a row per "
    "--adapt_sizes, fed by the input pipeline from JPEGs; PyTorch beside it, fed by a "
    "DataLoader with TLlib's transforms.")
_ADAPT_SIZES = flags.DEFINE_list("adapt_sizes", ["112"], "Image sizes of the adaptation rows.")
_ADAPT_BACKBONE = flags.DEFINE_string("adapt_backbone", cases.ADAPT_BACKBONE,
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

_RESULT_PREFIX = "BENCH_RESULT "


def _measure(worker: str) -> dict[str, Any]:
  """What a child process measures: one case, or the matmul, in one framework."""
  # Imported here, one framework per process: the other's libraries would count
  # in this process's peak memory and compete with its thread pools.
  if worker.startswith("flax"):
    from benchmarks import flax_steps as steps  # pylint: disable=g-import-not-at-top
  else:
    from benchmarks import torch_steps as steps  # pylint: disable=g-import-not-at-top
  if worker.endswith("_matmul"):
    return steps.time_matmul(_MATMUL_SIZE.value)
  case = cases.Case(**json.loads(_CASE.value))
  timer = steps.TIMERS[case.kind]
  if case.kind == "adapt":
    timer = functools.partial(timer, data_dir=_ADAPT_DIR.value, threads=_ADAPT_THREADS.value)
  return timer(case, _STEPS.value, _WARMUP.value, _DTYPE.value)


def _child_env(framework: str) -> dict[str, str]:
  env = dict(os.environ)
  if _HUGEPAGES.value:
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
      env["GLIBC_TUNABLES"] = ":".join(tunables + ["glibc.malloc.hugetlb=1"])
  if framework.startswith("flax") and _XLA_FLAGS.value:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()
  return env


def _run_worker(worker: str, case: cases.Case | None = None,
                adapt_dir: str | None = None) -> dict[str, Any]:
  """Measures one case (or the matmul) in a fresh interpreter (`adapt_dir`: the
  JPEGs of the adaptation rows)."""
  steps = _DIGITS_STEPS.value if case is not None and case.kind == "digits" else _STEPS.value
  command = [sys.executable, "-m", "benchmarks.flax_vs_torch", f"--worker={worker}",
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
      cases.format_matmul(report["matmul"]) + ".",
      "",
      "Forward, backward and SGD-momentum update of the backbone plus a 1000-class linear "
      "head on random images; median of the timed steps. `cpu s`: process CPU time per "
      "step. `GFLOP/s`: Flax, XLA's cost analysis of the compiled step; PyTorch, "
      "`FlopCounterMode` over one step (matmuls, convolutions, attention). `% mm`: of the "
      "jitted matmul rate above. `peak GB`: the process's peak RSS on CPU. `frozen 1-3`: "
      "stem and stages 1-3 frozen (no gradient, BatchNorm on running statistics). "
      "`digits <method>`: the method's whole train step on the digits task (small CNN, "
      "`batch` source + `batch` target 28-px images), tljax's trainer against the same step "
      "in PyTorch written from TLlib's example (`benchmarks/torch_reference.py`), `-` where "
      "no PyTorch restatement exists. `<backbone> <method> + pipeline`: the method's "
      "Office-31 step (`configs/<method>.py:office31`, random weights, `batch` source + "
      "`batch` target images) fed by the input pipeline from 300-px JPEGs: tljax's trainer "
      "and reader threads against TLlib's example with a `DataLoader` (TLlib's transforms, "
      "as many workers as tljax has threads); their `cpu s` include the pipeline. Raw "
      "figures: the `.json` beside this file.",
      "",
      cases.format_table(report["rows"], report["matmul"]),
      "",
  ])


def _run_cases(rows_cases: Sequence[cases.Case], torch_supported,
               adapt_dir: str | None) -> list[dict[str, Any]]:
  """Every row, Flax then (where `torch_supported(case)`) PyTorch, each in a child process."""
  rows = []
  for case in rows_cases:
    row = {"case": case.name, "model": case.model, "size": case.size, "batch": case.batch,
           "kind": case.kind, "frozen": case.frozen, "method": case.method, "remat": case.remat,
           "flax": _run_worker("flax", case, adapt_dir)}
    if torch_supported(case):
      row["torch"] = _run_worker("torch", case, adapt_dir)
    rows.append(row)
    print(f"done: {case.name}@{case.size}px", flush=True)
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKER.value:
    print(_RESULT_PREFIX + json.dumps(_measure(_WORKER.value)), flush=True)
    return

  with_torch = _TORCH.value and importlib.util.find_spec("torch") is not None
  if _TORCH.value and not with_torch:
    print("PyTorch is not installed: timing Flax only.")
  torch_supported = lambda case: False  # pylint: disable=unnecessary-lambda-assignment
  if with_torch:
    # Here, not at the top: PyTorch is optional, and the Flax children run this
    # module too. This process only reads which rows PyTorch can time.
    from benchmarks import torch_steps  # pylint: disable=g-import-not-at-top
    torch_supported = torch_steps.case_supported
  load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  matmul = {"flax": _run_worker("flax_matmul")}
  if with_torch:
    matmul["torch"] = _run_worker("torch_matmul")
  print(cases.format_matmul(matmul), flush=True)
  sizes = [int(size) for size in _SIZES.value]
  rows_cases = cases.default_cases(_MODELS.value, sizes, _BATCH.value, _FROZEN.value,
                                   _DIGITS.value, _ADAPT.value,
                                   [int(size) for size in _ADAPT_SIZES.value],
                                   _ADAPT_BACKBONE.value, _REMAT.value)
  with contextlib.ExitStack() as stack:
    adapt_dir = _ADAPT_DIR.value
    if any(case.kind == "adapt" for case in rows_cases):
      if not adapt_dir:
        adapt_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tljax_bench_"))
      for case in rows_cases:
        if case.kind == "adapt":
          office31_like.write_adapt_data(adapt_dir, cases.adapt_config(case, adapt_dir, 1),
                                         _ADAPT_IMAGES.value)
    rows = _run_cases(rows_cases, torch_supported, adapt_dir)
  report = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
            "machine": timing.machine(), "load_before": load_before,
            "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
            "dtype": _DTYPE.value, "steps": _STEPS.value, "warmup": _WARMUP.value,
            "glibc_tunables": _child_env("flax").get("GLIBC_TUNABLES", ""),
            "xla_flags": _child_env("flax").get("XLA_FLAGS", ""),
            "matmul": matmul, "rows": rows}
  print(cases.format_table(rows, matmul))
  if _OUT.value:
    base = _OUT.value[:-len(".json")] if _OUT.value.endswith(".json") else _OUT.value
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    with open(base + ".json", "w") as f:
      json.dump(report, f, indent=2)
    if not _OUT.value.endswith(".json"):
      command = "python -m benchmarks.flax_vs_torch " + " ".join(
          arg for arg in sys.argv[1:] if arg.startswith("--"))
      with open(base + ".md", "w") as f:
        f.write(_markdown(report, command))


if __name__ == "__main__":
  app.run(main)
