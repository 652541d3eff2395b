r"""Benchmark of the train step a config describes: compile time, steps/s, memory.

    python -m benchmarks.train_step --config=configs/source_only.py:digits [--steps=50] \
        [--out=FILE.json]
    python -m benchmarks.train_step --config=configs/dan.py:digits --compare_source_only

Runs the jitted train step of `tljax.train` on synthetic batches of the
config's shapes (no data pipeline), over all devices
(`benchmarks.flax_steps.time_train_step`). With `--compare_source_only`, the
same network is timed with ERM (`source_only`: the source batch alone) and
with `source_only_joint_bn` (the same [source; target] pass as most methods,
without a term), and the method's step time is reported as a ratio to each.
"""

from __future__ import annotations

import json

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags

from benchmarks import flax_steps

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with ':arg').")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after compilation).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of the synthetic task.")
_COMPARE = flags.DEFINE_bool("compare_source_only", False,
                             "Also time source_only and report the ratio.")
_OUT = flags.DEFINE_string("out", None, "Write the figures as JSON here.")
flags.mark_flag_as_required("config")


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
    rows[name] = flax_steps.time_train_step(cfg, num_classes=_NUM_CLASSES.value,
                                            steps=_STEPS.value, warmup=_WARMUP.value)
    figures = rows[name]
    print(f"{name:>20}: compile {figures['compile_s']:.2f} s | step {figures['step_ms']:.1f} ms "
          f"| {figures['steps_per_s']:.2f} steps/s | {figures['images_per_s']:.0f} images/s"
          + (f" | XLA peak ~{figures['step_peak_mib_estimate']:.1f} MiB"
             if "step_peak_mib_estimate" in figures else "")
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
  app.run(main)
