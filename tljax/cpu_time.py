"""CPU seconds of this process and its child processes, running ones included.

Input pipelines run in threads (counted by the process's own time) or in
worker processes (grain's, PyTorch's `DataLoader`), which `RUSAGE_CHILDREN`
counts only once they exit: `cpu_seconds` adds the running children from
`/proc`. Standard library only, so that any benchmark process can import it.
"""

from __future__ import annotations

import os
import resource


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
