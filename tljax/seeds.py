"""Several seeds of one configuration in one process: `config.num_seeds`.

    python -m tljax.main --config=configs/dann.py:digits --config.num_seeds=5 --workdir=DIR

trains seeds `config.seed`, ..., `config.seed + num_seeds - 1` together, the
train state of every seed stacked on a leading axis and one jitted step for
all of them (`train.over_seeds`: `jax.vmap` on accelerators, one copy of the
step per seed on CPU, `config.seed_batching`). Each seed keeps what its
single run has: its own initialisation, data order and augmentation (drawn
from its seed exactly as `python -m tljax.main --config.seed=<k>` draws
them), its evaluation, validators and checkpoint selection, and its workdir
`DIR/seed<k>` with the files a single run writes (`config.json` with
`seed=k, num_seeds=1`, so `tljax.sweep collect` reads it as any run, and a
single run resumes it). Rerunning the command resumes every seed.

What the seeds share is what costs the same for one seed or five: the
process, the data, the compiled programs, the loop. The step's arithmetic is
each seed's own, so the gain is largest where one seed's step leaves the
device idle (small networks on a GPU) and smallest on a CPU that one step
already keeps busy (`benchmarks/seeds.py`; the README's "Several seeds in
one process").

It runs the trainer's own loop (`train._train`) over the stacked state, and
the trainer's phases (`train._evaluate`, `train._save`, ...) for each seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import statistics
import time
from typing import Any, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from tljax import config_checks, train
from tljax import features as features_lib


def seed_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The config of each seed's single run: `seed + k`, `num_seeds=1` (fields
  that refer to the seed, as the semi-supervised tasks' labelled draw does,
  follow it as they do on `--config.seed=<k>`)."""
  configs = []
  for k in range(config.num_seeds):
    one = copy.deepcopy(config)  # references kept within the copy, none to `config`
    one.seed, one.num_seeds = config.seed + k, 1
    configs.append(one)
  return configs


def seed_workdir(workdir: str, seed: int) -> str:
  """A seed's workdir: the sweep's `.../seed<k>` layout."""
  return os.path.join(workdir, f"seed{seed}")


def _stacked_batches(streams: Sequence[Any], sharding: NamedSharding):
  """One batch per seed, stacked on a leading axis, as global arrays."""
  host = (jax.tree.map(lambda *xs: np.stack(xs), *parts) for parts in zip(*streams))
  return train._device_batches(host, sharding)


def _restore_all(seeds: list[train.SeedRun], setup: train.Setup) -> list[train.TrainState]:
  """Each seed's latest checkpoint; seeds whose latest steps differ (a stop
  between two seeds' saves) resume together from the latest step all of
  them have, the later checkpoints moved aside."""
  restored = [train._restore(s.run, setup) for s in seeds]
  steps = [int(state.step) for state, _ in restored]
  if len(set(steps)) > 1:
    common = min(steps)
    logging.warning("The seeds' latest checkpoints are of steps %s: resuming every seed from "
                    "step %d.", dict(zip((s.seed for s in seeds), steps)), common)
    for i, s in enumerate(seeds):
      if steps[i] == common:
        continue
      directory = os.path.join(s.run.workdir, "checkpoints")
      aside = os.path.join(s.run.workdir, "superseded_checkpoints")
      later = [d for d in os.listdir(directory) if d.isdigit() and int(d) > common]
      if common and not os.path.isdir(os.path.join(directory, str(common))):
        raise ValueError(
            f"seed {s.seed} has no checkpoint of step {common} to resume beside the other seeds "
            f"({s.run.workdir}); resume the seeds one by one (--config.num_seeds=1 "
            "--config.seed=<k> --workdir=<its seed folder>)")
      if jax.process_index() == 0:
        os.makedirs(aside, exist_ok=True)
        for name in later:
          shutil.move(os.path.join(directory, name),
                      os.path.join(aside, f"{name}.{int(time.time())}"))
      if jax.process_count() > 1:  # every process restores once process 0 has moved them
        multihost_utils.sync_global_devices(f"tljax_seeds_moved_{s.seed}")
      restored[i] = train._restore(s.run, setup)
  for s, (_, selection) in zip(seeds, restored):
    s.selection = selection
  return [state for state, _ in restored]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: Sequence[jax.Device] | None = None,
                       allow_changes: Sequence[str] = ()) -> dict[str, Any]:
  """`train.train_and_evaluate` for each seed of `config.num_seeds`, trained together.

  With `num_seeds == 1` this is `train.train_and_evaluate(config, workdir)`.

  Returns:
    `{'seeds': {seed: that seed's results.json}, 'summary': ...}`, the
    summary (the primary metric's mean and standard deviation over the
    seeds) also written to `workdir/seeds.json`; one seed: its results.
  """
  # A copy: the caller's config, references and all, stays as it was.
  config = copy.deepcopy(ml_collections.ConfigDict(config))
  if config.num_seeds == 1:
    return train.train_and_evaluate(config, workdir, devices=devices,
                                    allow_changes=allow_changes)
  config_checks.validate(config)
  start_time = time.time()
  configs = seed_configs(config)
  runs = [train._open_run(c, seed_workdir(workdir, c.seed), devices)
          for c in configs]
  mesh = runs[0].mesh
  runs = [dataclasses.replace(r, mesh=mesh, replicated=runs[0].replicated,
                              batch_sharding=runs[0].batch_sharding, start_time=start_time)
          for r in runs]
  # The data of every seed whose data config is the same is opened once.
  opened: dict[str, train.Domains] = {}
  seeds = []
  for c, r in zip(configs, runs):
    key = json.dumps(c.data.to_dict(), sort_keys=True, default=str)
    if key not in opened:
      opened[key] = train.open_data(c, r.workdir)
    seeds.append(train.SeedRun(c.seed, r, opened[key], log_prefix=f"seed {c.seed} "))
  first = seeds[0].domains
  setup = train.build(configs[0], first.num_classes, mesh, first.input_shape,
                      num_target_examples=len(first.target_train or ()), labels=first.labels,
                      num_source_domains=first.num_source_domains,
                      has_target=first.target_train is not None)
  step_fn = train.PhasedStep(
      setup.method, setup.ctx, seeds=len(seeds),
      seed_batching=train.seed_batching(config.seed_batching, mesh.devices.flat[0].platform),
      donate_argnums=(0,), out_shardings=(runs[0].replicated, runs[0].replicated))
  for s in seeds:
    s.domains = train._open_extra_domains(s.run.config, s.domains, setup.method)
    config_checks.check_batch_fits(s.run.config, s.domains, setup.method)
  claimed = []
  try:
    for s in seeds:
      train._claim_workdir(s.run, allow_changes)
      claimed.append(s)
    for domains in {id(s.domains): s.domains for s in seeds}.values():
      features_lib.save(domains.unsaved_features)
    # Each seed's checkpoint, or its fresh state as its single run initialises it.
    restored = _restore_all(seeds, setup)
    states = [state if int(state.step) or s.seed == configs[0].seed
              else setup.fresh_state(s.seed) for s, state in zip(seeds, restored)]
    for s, state in zip(seeds, states):
      s.selection.oracle_higher_is_better = s.domains.labels.higher_is_better
      train._write_identity(s.run, int(state.step))
      s.writer = train.open_writer(s.run.workdir, int(state.step))
    try:
      first_step = int(states[0].step)
      batches = _stacked_batches(
          [train.host_train_batches(s.run.config, s.domains, setup.method, first_step)
           for s in seeds], NamedSharding(mesh, P(None, "data")))
      state, train_time, first_step = train._train(seeds, setup, train.stack_seeds(states),
                                                   step_fn, batches, stacked=True)
      results = {}
      for k, s in enumerate(seeds):
        own = train.seed_slice(state, k)
        if s.last_eval is None:  # nothing left to train: the run had already finished
          s.last_eval = train._evaluate(s.run, setup, s.domains, own)
        held_out = train._evaluate_held_out(s.run, setup, s.domains, own, s.selection)
        results[s.seed] = train._write_results(
            s.run, setup, s.domains, own, s.last_eval, s.selection, held_out, train_time,
            first_step)
    finally:
      for s in seeds:
        if s.writer is not None:
          s.writer.close()
  finally:
    for s in claimed:
      if s.run.lock is not None:
        s.run.lock.release()
  summary = _summary(results, time.time() - start_time, workdir)
  primary = summary["primary_metric"]
  logging.info("Done, %d seeds: %s %s (%s in all).", len(seeds), primary["name"],
               ", ".join(f"{v:.4g}" if v is not None else "none" for v in primary["values"]),
               f"{summary['wall_time_s']:.0f} s")
  return {"seeds": results, "summary": summary}


def _summary(results: dict[int, dict], wall_time: float, workdir: str) -> dict[str, Any]:
  """seeds.json: each seed's primary metric and workdir, their mean and spread."""
  names = {r["primary_metric"]["name"] for r in results.values()}
  values = [r["primary_metric"]["value"] for r in results.values()]
  known = [v for v in values if v is not None]
  summary = {
      "primary_metric": {"name": names.pop() if len(names) == 1 else sorted(names),
                         "values": values,
                         "mean": statistics.fmean(known) if known else None,
                         "std": statistics.stdev(known) if len(known) > 1 else None},
      "seeds": list(results),
      "workdirs": {seed: seed_workdir(workdir, seed) for seed in results},
      "wall_time_s": wall_time,
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, "seeds.json")
    with open(path + ".tmp", "w") as f:
      json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
  return summary
