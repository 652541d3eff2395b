"""Clocks of the benchmarks: timed loops, CPU seconds with child processes, peak memory.

Framework-free (standard library only), so that every benchmark process can
import it, the PyTorch children of `benchmarks.flax_vs_torch` included.

Input pipelines run in threads (counted by the process's own time) or in
worker processes (grain's, PyTorch's `DataLoader`), which `RUSAGE_CHILDREN`
counts only once they exit: `cpu_seconds` adds the running children from
`/proc`.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Any, Callable


def cpu_seconds() -> float:
  """CPU time of this process and of its children, finished (and waited for) or running."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
  return total + _live_children_cpu()


def _live_children_cpu() -> float:
  """CPU time of running child processes, which RUSAGE_CHILDREN counts only once they exit."""
  total = 0.0
  ticks = os.sysconf("SC_CLK_TCK")
  children = set()
  try:
    # A child belongs to the thread that started it: look under every thread.
    for task in os.listdir("/proc/self/task"):
      with open(f"/proc/self/task/{task}/children") as f:
        children.update(f.read().split())
  except OSError:
    return 0.0
  for pid in children:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
      continue
  return total


def peak_rss_bytes() -> int:
  """This process's resident-set high-water mark."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def timed_loop(step: Callable[[], Any], steps: int, warmup: int,
               cpu_clock: Callable[[], float] = time.process_time
               ) -> tuple[list[float], list[float]]:
  """Wall and CPU seconds (`cpu_clock`: this process's by default) of each of
  `steps` calls of `step` (which waits for its own result), after `warmup`
  untimed ones."""
  step_seconds, cpu_seconds_ = [], []
  for index in range(warmup + steps):
    start, cpu_start = time.perf_counter(), cpu_clock()
    step()
    if index >= warmup:
      step_seconds.append(time.perf_counter() - start)
      cpu_seconds_.append(cpu_clock() - cpu_start)
  return step_seconds, cpu_seconds_


def summary(step_seconds: list[float], cpu_seconds_: list[float],
            images: int) -> dict[str, float]:
  """Median and fastest step, images per second and median CPU seconds of a timed loop."""
  median = statistics.median(step_seconds)
  return {"step_s": median, "step_min_s": min(step_seconds),
          "images_per_s": images / median, "cpu_s": statistics.median(cpu_seconds_)}


def machine() -> dict[str, Any]:
  """The CPU model, core count, platform and Python version, for a report."""
  model = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version()}
