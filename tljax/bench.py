"""Benchmark of the train step a config describes: compile time, steps/s, memory.

    python -m tljax.bench --config=configs/source_only.py:digits [--steps=50] [--out=FILE.json]
    python -m tljax.bench --config=configs/dan.py:digits --compare_source_only

Runs the jitted train step of `tljax.train` on synthetic batches of the
config's shapes (no data pipeline), over all devices. With
`--compare_source_only`, the same network is timed with ERM (`source_only`: the
source batch alone) and with `source_only_joint_bn` (the same [source; target]
pass as most methods, without a term), and the method's step time is reported
as a ratio to each.
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any

from absl import app, flags
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from tljax import train

_CONFIG = None
_STEPS = None
_WARMUP = None
_NUM_CLASSES = None
_COMPARE = None
_OUT = None


def _define_flags() -> None:
  """Defines the command-line flags; called only when run as a program, so that
  importing this module for its functions defines no flags."""
  global _CONFIG, _STEPS, _WARMUP, _NUM_CLASSES, _COMPARE, _OUT
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with ':arg').")
  _STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after compilation).")
  _WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
  _NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of the synthetic task.")
  _COMPARE = flags.DEFINE_bool("compare_source_only", False, "Also time source_only and report the ratio.")
  _OUT = flags.DEFINE_string("out", None, "Write the figures as JSON here.")
  flags.mark_flag_as_required("config")


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


def main(argv):
  del argv
  config = _CONFIG.value
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"batch {config.batch_size} source + {config.batch_size} target, "
        f"{config.data.image_size} px, model {config.model.name}")
  rows = {}
  configs = [(config.method.name, config)]
  if _COMPARE.value:
    # ERM reads the source batch only; the joint-BatchNorm baseline runs the same
    # [source; target] pass as most methods, so the ratio to it is the term's cost.
    for name, method in (("source_only", {"name": "source_only"}),
                         ("source_only_joint_bn", {"name": "source_only_joint_bn",
                                                   "forward": "joint", "pretrain_steps": 0,
                                                   "pretrain_lr_scale": 1.0})):
      if name != config.method.name:
        baseline = ml_collections.ConfigDict(config.to_dict())
        baseline.method = ml_collections.ConfigDict(method)
        configs.insert(len(configs) - 1, (name, baseline))
  for name, cfg in configs:
    rows[name] = time_train_step(cfg, num_classes=_NUM_CLASSES.value, steps=_STEPS.value,
                                 warmup=_WARMUP.value)
    figures = rows[name]
    print(f"{name:>20}: compile {figures['compile_s']:.2f} s | step {figures['step_ms']:.1f} ms "
          f"| {figures['steps_per_s']:.2f} steps/s | {figures['images_per_s']:.0f} images/s"
          + (f" | XLA peak ~{figures['step_peak_mib_estimate']:.1f} MiB" if "step_peak_mib_estimate" in figures else "")
          + f" | max RSS {figures['process_max_rss_mib']:.0f} MiB")
  for baseline in ("source_only", "source_only_joint_bn"):
    if baseline in rows and baseline != config.method.name:
      ratio = rows[config.method.name]["step_ms"] / rows[baseline]["step_ms"]
      print(f"{config.method.name} step / {baseline} step = {ratio:.3f}")
      rows[f"ratio_to_{baseline}"] = ratio
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"config": config.to_dict(), "backend": jax.default_backend(),
                 "devices": jax.device_count(), "results": rows}, f, indent=2, default=str)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
