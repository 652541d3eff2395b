"""The rows of the Flax-vs-PyTorch table (`benchmarks.flax_vs_torch`) and its format.

A row is a `Case`: its `kind` says what step is timed (`backbone`: a
1000-class classifier on random images; `digits`: a method's whole digits
train step; `adapt`: a method's Office-31 step fed by the input pipeline), and
`benchmarks.flax_steps` / `benchmarks.torch_steps` time it in each framework.
This module imports neither framework, so that each child process of the
benchmark loads only the one it times.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Sequence

import ml_collections

NUM_CLASSES = 1000
MATMUL_SIZE = 4096
# The digits rows by default: every method with a digits config, baselines first.
DIGITS_METHODS = ("source_only", "source_only_joint_bn", "dann", "cdan", "cdan_mcc", "mdd", "bsp",
                  "dan", "jan", "mcc", "afn", "ddc", "deep_coral", "cmd", "entropy_min", "bnm",
                  "mcd", "adda", "dsan", "pseudo_label", "mean_teacher", "fixmatch", "shot")
DIGITS_BATCH = 64
DIGITS_CLASSES = 10
DIGITS_IMAGE = (28, 28, 3)
# The adaptation rows by default: ERM (the source batch alone), then the
# ResNet-50 DA steps the GPU table reports.
ADAPT_METHODS = ("source_only", "dan", "dann", "cdan")
ADAPT_BACKBONE = "resnet50"
ADAPT_IMAGE_SIDE = 300  # Office-31's Amazon images are 300 x 300
OFFICE31_CLASSES = 31
# PyTorch module prefixes frozen in the frozen-backbone case, and the matching
# Flax parameter paths: torchvision's stem and stages 1-3.
FROZEN_STAGES_TORCH = ("conv1", "bn1", "layer1", "layer2", "layer3")
FROZEN_STAGES_REGEX = r"backbone/(conv1|bn1|layer[1-3]_\d+)(/.*)?"


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of the table.

  Attributes:
    kind: 'backbone', 'digits' or 'adapt' (how to build and time the step).
    model: backbone registry name; kind 'digits': the method.
    size: square image size.
    batch: images per step (per domain for the 'digits' and 'adapt' kinds).
    frozen: regex over '/'-joined Flax parameter paths that are frozen (and
      whose BatchNorm layers use running statistics); empty for none.
    label: the row's name in the table.
    method: kind 'adapt': the method whose `office31` config is timed.
    remat: kind 'backbone': Flax recomputes each block in the backward pass
      (`remat=True`; a ViT's blocks also scanned, `scan_blocks=True`);
      PyTorch's row is the same plain step, what its users run.
  """

  kind: str
  model: str
  size: int
  batch: int
  frozen: str = ""
  label: str = ""
  method: str = ""
  remat: bool = False

  @property
  def name(self) -> str:
    return self.label or self.model


def default_cases(models: Sequence[str], sizes: Sequence[int], batch: int,
                  frozen: bool, digits_methods: Sequence[str] = (),
                  adapt_methods: Sequence[str] = (), adapt_sizes: Sequence[int] = (),
                  adapt_backbone: str = ADAPT_BACKBONE,
                  remat_models: Sequence[str] = ()) -> list[Case]:
  """The backbone rows (each of `remat_models` also with rematerialisation),
  the frozen ResNet-50 rows, one digits row per method, then the ResNet-50
  adaptation rows (method x size, `batch` per domain)."""
  cases = [Case("backbone", model, size, batch) for model in models for size in sizes]
  cases += [Case("backbone", model, size, batch, label=f"{model} remat", remat=True)
            for model in remat_models for size in sizes]
  if frozen:
    cases += [Case("backbone", "resnet50", size, batch, frozen=FROZEN_STAGES_REGEX,
                   label="resnet50 frozen 1-3") for size in sizes]
  cases += [Case("digits", method, DIGITS_IMAGE[0], DIGITS_BATCH, label=f"digits {method}")
            for method in digits_methods]
  cases += [Case("adapt", adapt_backbone, size, batch, method=method,
                 label=f"{adapt_backbone} {method} + pipeline")
            for size in adapt_sizes for method in adapt_methods]
  return cases


def digits_config(method: str, batch: int) -> ml_collections.ConfigDict:
  """`configs/<method>.py:digits` with `batch` source (and target) images per step."""
  config = importlib.import_module(f"configs.{method}").get_config("digits")
  config.batch_size = batch
  return config


def adapt_config(case: Case, data_dir: str, threads: int) -> ml_collections.ConfigDict:
  """`configs/<case.method>.py:office31` for `case`: its backbone (random
  weights: a step's cost does not depend on them), image size and batch, the
  JPEGs of `data_dir`, `threads` reader threads."""
  config = importlib.import_module(f"configs.{case.method}").get_config("office31")
  config.model.name = case.model
  config.model.init = ""
  config.data.image_size = case.size
  config.batch_size = case.batch
  config.manual_dir = os.path.join(data_dir, "office31")
  config.data_dir = os.path.join(data_dir, "tfds")
  config.data.num_threads = threads
  return config


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
  """The matmul rates the '% mm' columns are fractions of, as one line."""
  parts = [f"{name}: {result['gflops_per_s']:.0f} GFLOP/s "
           f"({result['size']}x{result['size']} fp32 in {result['seconds']:.3f} s)"
           for name, result in (("jitted JAX", matmul.get("flax")),
                                ("PyTorch", matmul.get("torch"))) if result]
  return "Matmul rate: " + "; ".join(parts)
