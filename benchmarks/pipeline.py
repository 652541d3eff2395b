r"""Input-pipeline benchmark on JPEGs in Office-31's layout, built by the real builder.

    python -m benchmarks.pipeline [--images=256 --image_side=500 --size=224 \
        --threads=1,2 --workers=0 --batch=32 --steps=8] [--model=resnet50 --model_size=112]
    python -m benchmarks.pipeline --step_s=4.5 --overlap_steps=3

Writes `--images` JPEGs of `--image_side` px (crops of scikit-image's sample
photographs, so that they compress like photographs do) as
`<tmp>/office31/amazon/images/<class>/frame_XXXX.jpg` (`benchmarks.office31_like`), builds
`office31/amazon` from them through `open_domain` (timing the build), then
measures, for `--preprocess` at `--size`:

- `preprocess`: the per-example function alone, in this thread: images/s of
  one core, and where the time goes (decoding, the rest);
- `pipeline`: `train_batches` (reading array_record, decoding, augmenting,
  stacking) for each `--threads` x `--workers` setting: images/s of wall time,
  and images per CPU-second (per core; process CPU time, including workers),
  which other jobs on a shared machine disturb much less.

With `--model`, the train step of that backbone (`benchmarks.flax_vs_torch`, batch
`--batch`, `--model_size` px) is timed too, and the report says how many
cores of this pipeline keep up with it; `--step_s` gives a step time measured
elsewhere instead (e.g. a GPU's). `--overlap_steps` then runs the two streams
of a DA step (source and target) behind a stand-in step twice that long and
reports how long each step waited for its data. Every figure goes to stdout as
a table and, with `--out`, to a JSON file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from benchmarks import office31_like
from benchmarks import timing
from tljax.data import open_domain
from tljax.data import pipeline
from tljax.data import preprocess as preprocess_lib

_IMAGES = flags.DEFINE_integer("images", 256, "JPEGs in the synthetic domain.")
_IMAGE_SIDE = flags.DEFINE_integer("image_side", 500, "Side of the stored JPEGs (amazon: 300, "
                                   "dslr: 1000, webcam: 423-640).")
_SIZE = flags.DEFINE_integer("size", 224, "Output side of the preprocessing.")
_PREPROCESS = flags.DEFINE_string("preprocess", "imagenet_train", "Preprocessing preset.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed batches per pipeline setting.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "grain threads to try (0: caller's thread).")
_WORKERS = flags.DEFINE_list("workers", ["0"], "Worker processes to try (0: none).")
_CACHE = flags.DEFINE_bool("cache", False, "Hold the encoded JPEGs in memory (open_domain cache).")
_MODEL = flags.DEFINE_string("model", None, "Also time this backbone's train step, e.g. resnet50.")
_MODEL_SIZE = flags.DEFINE_integer("model_size", 112, "Image side for --model.")
_STEP_S = flags.DEFINE_float(
    "step_s", None, "Seconds of a train step on --batch images (as benchmarks.flax_vs_torch "
    "times it), to compare with instead of timing --model. A DA step reads --batch source and "
    "--batch target images and takes about twice that.")
_OVERLAP_STEPS = flags.DEFINE_integer(
    "overlap_steps", 0, "With a step time: run this many steps of a source and a target stream "
    "(as train.py does) against a stand-in step that sleeps that long, and report how long "
    "each step waited for its batches (0: prefetching hides the pipeline).")
_DIR = flags.DEFINE_string("dir", None, "Work directory (default: a temporary one, removed).")
_OUT = flags.DEFINE_string("out", None, "Write the figures as JSON here.")


def time_preprocess(domain, preprocess, count: int) -> dict[str, float]:
  """One thread: the preprocessing function alone, and decoding alone, on the stored images."""
  examples = [domain.source[i % len(domain)] for i in range(count)]
  start = time.process_time()
  for i, example in enumerate(examples):
    preprocess(example, np.random.default_rng((0, i)))
  per_image = (time.process_time() - start) / count
  start = time.process_time()
  for example in examples:
    preprocess_lib.decode_image(example["image"])
  decode = (time.process_time() - start) / count
  return {"ms_per_image": 1e3 * per_image, "images_per_core_s": 1.0 / per_image,
          "full_decode_ms": 1e3 * decode}


def time_pipeline(domain, preprocess, *, batch: int, steps: int, threads: int,
                  workers: int) -> dict[str, float]:
  """`train_batches` throughput: wall images/s and images per CPU-second."""
  batches = pipeline.train_batches(domain, global_batch_size=batch, preprocess=preprocess,
                                   seed=0, num_threads=threads, num_workers=workers,
                                   prefetch=max(4, 2 * threads, 2 * workers))
  for _ in range(max(2, workers)):  # start-up (worker processes) and warm-up
    next(batches)
  wall, cpu = time.perf_counter(), timing.cpu_seconds()
  for _ in range(steps):
    batch_arrays = next(batches)
  wall, cpu = time.perf_counter() - wall, timing.cpu_seconds() - cpu
  assert batch_arrays["image"].shape[0] == batch
  close = getattr(batches, "close", None)
  if close is not None:
    close()
  images = steps * batch
  return {"threads": threads, "workers": workers, "images_per_s": images / wall,
          "images_per_cpu_s": images / cpu if cpu > 0 else float("nan")}


def time_overlap(domain, preprocess, *, batch: int, threads: int, step_s: float,
                 steps: int) -> dict[str, float]:
  """Seconds per step spent waiting for a source and a target batch behind a `step_s` DA step.

  The stand-in step sleeps, as the host does while an accelerator computes,
  so the pipeline has the CPUs to itself.
  """
  streams = [pipeline.train_batches(domain, global_batch_size=batch, preprocess=preprocess,
                                    seed=seed, num_threads=threads, prefetch=4)
             for seed in (0, 1)]
  for stream in streams:  # the first batches are always waited for
    next(stream)
  waits = []
  for _ in range(steps):
    start = time.perf_counter()
    for stream in streams:
      next(stream)
    waits.append(time.perf_counter() - start)
    time.sleep(step_s)
  return {"threads": threads, "step_s": step_s, "steps": steps,
          "mean_wait_s": float(np.mean(waits)), "max_wait_s": float(np.max(waits))}


def time_model_step(model: str, size: int, batch: int, work_dir: str) -> float:
  """Seconds per train step of `model`, from `benchmarks.flax_vs_torch` in a process of its own."""
  out = os.path.join(work_dir, "model_bench.json")
  command = [sys.executable, "-m", "benchmarks.flax_vs_torch", f"--models={model}",
             f"--sizes={size}", f"--batch={batch}", "--steps=3", "--warmup=1", "--torch=false",
             "--frozen=false", "--digits_methods=", "--adapt_methods=", f"--out={out}"]
  subprocess.run(command, check=True, capture_output=True)
  with open(out) as f:
    return json.load(f)["rows"][0]["flax"]["step_s"]


def run(work_dir: str) -> dict[str, Any]:
  """Every figure of the flags' settings, measured in `work_dir`."""
  manual_dir = os.path.join(work_dir, "office31")
  start = time.perf_counter()
  office31_like.write_office31_like(manual_dir, _IMAGES.value, _IMAGE_SIDE.value)
  write_s = time.perf_counter() - start
  start = time.perf_counter()
  domain = open_domain("office31/amazon", "train", data_dir=os.path.join(work_dir, "tfds"),
                       manual_dir=manual_dir, cache=_CACHE.value)
  build_s = time.perf_counter() - start
  preprocess = preprocess_lib.get_preprocess(_PREPROCESS.value, size=_SIZE.value)
  figures: dict[str, Any] = {
      "images": len(domain), "image_side": _IMAGE_SIDE.value, "size": _SIZE.value,
      "preprocess": _PREPROCESS.value, "batch": _BATCH.value, "cpu_count": os.cpu_count(),
      "write_s": write_s, "build_s": build_s, "build_images_per_s": len(domain) / build_s,
      "single_thread": time_preprocess(domain, preprocess, min(len(domain), 128)),
      "pipeline": [time_pipeline(domain, preprocess, batch=_BATCH.value, steps=_STEPS.value,
                                 threads=int(t), workers=int(w))
                   for w in _WORKERS.value for t in _THREADS.value],
  }
  step_s = _STEP_S.value
  if step_s is None and _MODEL.value:
    step_s = time_model_step(_MODEL.value, _MODEL_SIZE.value, _BATCH.value, work_dir)
    figures["model"] = {"name": _MODEL.value, "size": _MODEL_SIZE.value}
  if step_s is not None:
    # The pipeline has to deliver images as fast as the step consumes them; a
    # DA step consumes a source and a target batch in about twice `step_s`.
    needed = _BATCH.value / step_s
    per_core = max(p["images_per_cpu_s"] for p in figures["pipeline"])
    figures["step"] = {"step_s": step_s, "images_per_s_needed": needed,
                       "cores_needed": needed / per_core}
    if _OVERLAP_STEPS.value:
      figures["overlap"] = time_overlap(domain, preprocess, batch=_BATCH.value,
                                        threads=max(int(t) for t in _THREADS.value),
                                        step_s=2 * step_s, steps=_OVERLAP_STEPS.value)
  return figures


def _print(figures: dict[str, Any]) -> None:
  single = figures["single_thread"]
  print(f"{figures['images']} JPEGs of {figures['image_side']} px -> {figures['preprocess']} "
        f"at {figures['size']} px, batch {figures['batch']}, {figures['cpu_count']} CPUs")
  print(f"build (office31/amazon through the builder): {figures['build_s']:.2f} s, "
        f"{figures['build_images_per_s']:.0f} images/s")
  print(f"preprocess alone, one thread: {single['ms_per_image']:.2f} ms/image = "
        f"{single['images_per_core_s']:.0f} images/s per core "
        f"(a full-size decode alone: {single['full_decode_ms']:.2f} ms)")
  print(f"{'workers':>8} {'threads':>8} {'images/s':>10} {'images/cpu-s':>13}")
  for p in figures["pipeline"]:
    print(f"{p['workers']:>8} {p['threads']:>8} {p['images_per_s']:>10.0f} "
          f"{p['images_per_cpu_s']:>13.0f}")
  if "step" in figures:
    step = figures["step"]
    print(f"train step: {step['step_s']:.3f} s per {figures['batch']} images -> needs "
          f"{step['images_per_s_needed']:.1f} images/s = {step['cores_needed']:.3f} cores of "
          "this pipeline")
  if "overlap" in figures:
    overlap = figures["overlap"]
    print(f"behind a {overlap['step_s']:.3f} s DA step ({overlap['threads']} threads, "
          f"{overlap['steps']} steps): waited {overlap['mean_wait_s'] * 1e3:.1f} ms per step "
          f"on average, {overlap['max_wait_s'] * 1e3:.1f} ms at most")


def main(argv):
  del argv
  if _DIR.value:
    figures = run(_DIR.value)
  else:
    with tempfile.TemporaryDirectory(prefix="tljax_data_bench_") as work_dir:
      figures = run(work_dir)
  _print(figures)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
