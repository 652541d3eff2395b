"""What a run writes as it trains: metrics.jsonl, TensorBoard events, progress.

`create(workdir, resume_step)` is the writer of one run (process 0 writes, the
others write nothing); `progress_report` is clu's report of steps/s and ETA on
the log lines' steps, written through the same writers. `tljax.train` imports
this module when a run starts writing: clu's writers load TensorFlow, which a
run that stops on bad input never needs.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Sequence

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax


class JsonlWriter(metric_writers.interface.MetricWriter):
  """Scalars as lines `{"step": s, "kind": "train" | "eval" | ..., ...}` of metrics.jsonl.

  Keys arrive as `kind/name`; clu's progress report (`steps_per_sec`,
  `uptime`) as bare names, written as `"kind": "progress"`. On a resume, lines past the restored step are
  dropped first: the resumed run recomputes them (identically). The file is a
  log, never read back by the run: a line that does not parse (a run killed
  while writing it) is dropped with a warning.
  """

  def __init__(self, path: str, resume_step: int):
    self.path = path
    if os.path.exists(path):
      kept = []
      with open(path) as f:
        for number, line in enumerate(f, start=1):
          try:
            step = json.loads(line)["step"]
          except (json.JSONDecodeError, KeyError, TypeError):
            logging.warning("%s:%d: dropped a line that does not parse (%r).", path, number,
                            line[:80])
            continue
          if step <= resume_step:
            kept.append(line if line.endswith("\n") else line + "\n")
      with open(path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)

  def write_scalars(self, step, scalars):
    by_kind = collections.defaultdict(dict)
    for key, value in scalars.items():
      kind, slash, name = key.partition("/")
      if not slash:  # clu's progress report: steps_per_sec, uptime
        kind, name = "progress", key
      by_kind[kind][name] = float(value)
    with open(self.path, "a") as f:
      for kind, values in by_kind.items():
        f.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")

  # Scalars only: the other kinds reach TensorBoard, the MultiWriter's other writer.
  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  # Each write_scalars opens, appends and closes: nothing is held to flush or close.
  def flush(self):
    pass

  def close(self):
    pass


def create(workdir: str, resume_step: int) -> metric_writers.MetricWriter:
  """TensorBoard events + metrics.jsonl on process 0; nothing elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)])


def progress_report(total_steps: int, every_steps: int,
                    writers: Sequence[metric_writers.MetricWriter]
                    ) -> periodic_actions.ReportProgress:
  """clu's progress report (steps/s, ETA) every `every_steps` steps, also written
  as `steps_per_sec` and `uptime` scalars (TensorBoard, metrics.jsonl's
  `progress` lines). Its first call, after the compiled first step, starts the clock."""
  return periodic_actions.ReportProgress(
      num_train_steps=total_steps, every_steps=every_steps, every_secs=None,
      writer=writers[0] if len(writers) == 1 else metric_writers.MultiWriter(writers))
