"""Sweeps: a grid of runs (configs x tasks x seeds), launched and collected.

    python -m tljax.sweep launch --grid=experiments/grids/digits.py --out=DIR [--parallel=2]
    python -m tljax.sweep launch --grid=... --out=DIR --slurm=experiments/slurm/array.sbatch
    python -m tljax.sweep collect --out=DIR [--grid=...] [--to=PREFIX] [--reference=FILE.csv]
        [--select=snd,dev | --select=all]

A grid file defines `get_grid()` returning a dict (`--grid=FILE:ARG` calls
`get_grid(ARG)`, as config files take their argument, e.g. a grid's
Office-31 rows beside its embedded ones):

    methods: {row name: config spec, e.g. "configs/dann.py:office31", or
              {"config": spec, "overrides": {field: value}} for that method only,
              optionally with "init_from": another row's name: each run then
              starts from that row's run of the same task and seed
              (`model.init` = its workdir), e.g. SHOT from `source_only`;
              "init_field" names another config field to receive that
              workdir, e.g. `method.teacher` (Noisy Student's rounds)}
    tasks:   {column name: {config field: value}}, e.g. {"A→W": {"source": ..., "target": ...}}
    seeds:   [0, 1, 2]
    overrides (optional): {config field: value} applied to every run
    baselines (optional): the rows `collect` compares the others with: row
              names, each compared with every row (default: `source_only`,
              `adabn`), or {row: its baseline row} for a baseline per row
              (e.g. each variant against its method's unchanged setting)

Each run is `python -m tljax.main --config=SPEC --workdir=OUT/<method>/<task>/seed<k>
--config.seed=k --config.<field>=<value> ...`, with its own workdir. `launch`
skips finished runs (a `results.json` that parses and reports the run's last
step) and reruns the others, which resume from their latest checkpoint; it runs
them here (at most N at a time; a run with `init_from` waits for the run it
starts from; Ctrl-C or SIGTERM stops the runs, which save a checkpoint, and
starts no more) or writes a SLURM array job
(one array task per run; runs whose starting run has not finished are left for
the next submission) from a template. With `seeds_together`
(`launch --seeds_together`), the unfinished consecutive seeds of each row
and task are one run of `--config.num_seeds=K` (`tljax.seeds`) whose
workdir `OUT/<method>/<task>` holds the same `seed<k>` workdirs. `collect`
gathers every `results.json` (naming and skipping those that do not parse)
into `PREFIX.md` and `PREFIX.csv` (default
`OUT/results`): target
accuracy mean ± std over seeds per method and task, an average column, and wall
time, beside reference numbers when given; a 95% interval per row and two
verdicts against the baseline rows (`source_only` / `adabn` unless the grid
names others): better / worse when the intervals of the mean do not overlap,
and the paired difference from the baseline's run of the same seed with its
interval (better / worse when it excludes 0); and with `--select`,
the configuration each unsupervised validator picks per task, beside the
oracle's pick. The command line is `tljax/sweep/__main__.py`; tests and
experiment scripts import these functions.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from absl import logging
import scipy.stats

from tljax import validators

@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep."""

  method: str
  task: str
  seed: int
  spec: str
  overrides: tuple[tuple[str, Any], ...]
  init_from: str | None = None  # the row whose run (same task and seed) this one starts from
  init_field: str = "model.init"  # the config field that receives that run's workdir
  # Seeds `seed`, ..., `seed + num_seeds - 1` in one process (`batch_seeds`):
  # its workdir holds theirs, `seed<k>`, as the sweep lays them out.
  num_seeds: int = 1

  @property
  def name(self) -> str:
    last = f"-{self.seed + self.num_seeds - 1}" if self.num_seeds > 1 else ""
    return f"{self.method}/{_slug(self.task)}/seed{self.seed}{last}"

  def workdir(self, out: str) -> str:
    if self.num_seeds > 1:
      return os.path.join(out, self.method, _slug(self.task))
    return os.path.join(out, self.method, _slug(self.task), f"seed{self.seed}")

  def seed_runs(self) -> list[Run]:
    """The single-seed runs this one trains."""
    return [dataclasses.replace(self, seed=self.seed + k, num_seeds=1)
            for k in range(self.num_seeds)]

  def parent(self) -> Run | None:
    """The run this one starts from (`init_from`), as a key: its workdir is all it needs."""
    if self.init_from is None:
      return None
    return Run(self.init_from, self.task, self.seed, spec="", overrides=())

  def command(self, out: str, python: str = sys.executable) -> list[str]:
    args = [python, "-m", "tljax.main", f"--config={self.spec}", f"--workdir={self.workdir(out)}",
            f"--config.seed={self.seed}"]
    if self.num_seeds > 1:
      args.append(f"--config.num_seeds={self.num_seeds}")
    args += [f"--config.{key}={_flag_value(value)}" for key, value in self.overrides]
    if self.init_from is not None:
      args.append(f"--config.{self.init_field}={os.path.abspath(self.parent().workdir(out))}")
    return args


def _slug(task: str) -> str:
  """A directory name for a task: 'A→W' -> 'A2W', 'digits / m' -> 'digits_m'."""
  task = task.replace("→", "2").replace("->", "2")
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("_") or "task"


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


def load_grid(path: str) -> dict[str, Any]:
  """The grid of `path`: a grid file, or `FILE:ARG` for `get_grid(ARG)`."""
  arg = None
  if not os.path.exists(path) and ":" in path:
    path, arg = path.rsplit(":", 1)
  spec = importlib.util.spec_from_file_location("tljax_grid", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"grid file {path!r} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  grid = module.get_grid() if arg is None else module.get_grid(arg)
  missing = {"methods", "tasks", "seeds"} - set(grid)
  if missing:
    raise ValueError(f"{path}: get_grid() lacks {sorted(missing)}")
  baselines = grid.get("baselines", ())
  if isinstance(baselines, str):
    raise ValueError(f"{path}: 'baselines' is a list of rows or a {{row: baseline}} dict, "
                     f"not the string {baselines!r}")
  named = (set(baselines) | set(baselines.values()) if isinstance(baselines, Mapping)
           else set(baselines))
  unknown = sorted(named - set(grid["methods"]))
  if unknown:
    raise ValueError(f"{path}: 'baselines' names {unknown}, not rows of the grid "
                     f"(rows: {sorted(grid['methods'])})")
  return grid


def expand(grid: dict[str, Any]) -> list[Run]:
  """Every (method, task, seed) of the grid, in table order."""
  common = dict(grid.get("overrides", {}))
  runs = []
  for method, spec in grid["methods"].items():
    method_overrides, init_from, init_field = {}, None, "model.init"
    if isinstance(spec, dict):
      init_from, init_field = spec.get("init_from"), spec.get("init_field", "model.init")
      spec, method_overrides = spec["config"], dict(spec.get("overrides", {}))
      if init_from is not None and init_from not in grid["methods"]:
        raise ValueError(f"method {method!r}: init_from={init_from!r} is not a row of the grid "
                         f"(rows: {sorted(grid['methods'])})")
      if init_from is not None and init_field in method_overrides:
        raise ValueError(f"method {method!r}: give init_from or a {init_field} override, "
                         "not both")
    chain, row = [method], init_from
    while row is not None:  # init_from links must end at a row that starts fresh
      if row in chain:
        raise ValueError(f"init_from links form a cycle: {' -> '.join(chain + [row])}")
      chain.append(row)
      parent_spec = grid["methods"][row]
      row = parent_spec.get("init_from") if isinstance(parent_spec, dict) else None
    for task, task_overrides in grid["tasks"].items():
      for seed in grid["seeds"]:
        overrides = {**common, **method_overrides, **task_overrides}
        runs.append(Run(method, task, int(seed), spec, tuple(sorted(overrides.items())),
                        init_from, init_field))
  return runs


def batch_seeds(runs: Sequence[Run]) -> list[Run]:
  """The runs with each row's consecutive seeds of one task as one run of
  `num_seeds` seeds (`tljax.seeds`: one process, one step for all), in the
  order of their first seeds. A run that starts from another (`init_from`)
  stays on its own: each seed starts from a different workdir."""
  batched: list[Run] = []
  for run in runs:
    last = batched[-1] if batched else None
    if (last is not None and run.init_from is None and last.init_from is None
        and (last.method, last.task, last.spec, last.overrides)
        == (run.method, run.task, run.spec, run.overrides)
        and run.num_seeds == 1 and run.seed == last.seed + last.num_seeds):
      batched[-1] = dataclasses.replace(last, num_seeds=last.num_seeds + 1)
    else:
      batched.append(run)
  return batched


def read_results(path: str) -> tuple[dict[str, Any] | None, str]:
  """A run's `results.json` and '', or None and why it cannot be used (missing,
  empty, cut short, not the dict of numbers a run writes)."""
  try:
    with open(path) as f:
      results = json.load(f)
  except FileNotFoundError:
    return None, "missing"
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return None, f"does not parse ({' '.join(str(e).split())})"
  if not isinstance(results, dict):
    return None, f"holds a {type(results).__name__}, not a run's results"
  primary = results.get("primary_metric")
  if primary is not None:  # a run's own measure (accuracy, H-score, MAE; None without a target)
    if not isinstance(primary, dict) or not _number_or_none(primary.get("value")):
      return None, f"its primary_metric is {primary!r}, not a named number"
  elif not _number_or_none(results.get("target_accuracy"), allow_none=False):
    return None, f"its target_accuracy is {results.get('target_accuracy')!r}, not a number"
  for key in ("target_accuracy", "source_accuracy"):
    if not _number_or_none(results.get(key)):
      return None, f"its {key} is {results.get(key)!r}, not a number"
  return results, ""


def _number_or_none(value: Any, allow_none: bool = True) -> bool:
  return ((value is None and allow_none)
          or (isinstance(value, (int, float)) and not isinstance(value, bool)))


def _override(run: Run, field: str) -> Any:
  return dict(run.overrides).get(field)


def is_finished(run: Run, out: str) -> bool:
  """The run's results.json parses and reports its last step (`total_steps` of
  the config it ran with, and of the grid when the grid sets it); for a run
  of several seeds, each seed's."""
  if run.num_seeds > 1:
    return all(is_finished(one, out) for one in run.seed_runs())
  results, _ = read_results(os.path.join(run.workdir(out), "results.json"))
  if results is None:
    return False
  config = results.get("config")
  step = results.get("step")
  total = config.get("total_steps") if isinstance(config, dict) else None
  wanted = _override(run, "total_steps")
  return (isinstance(step, int) and step == total
          and (wanted is None or step == int(wanted)))


# ----------------------------------------------------------------------------
# Launching.
# ----------------------------------------------------------------------------


def _start(run: Run, out: str) -> subprocess.Popen:
  """Starts the run, its output appended to `log.txt` in its workdir.

  In a session of its own, so that a Ctrl-C at the terminal reaches the
  launcher alone, which passes it on once (a second one would make a run stop
  without saving a checkpoint)."""
  workdir = run.workdir(out)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    log.write(f"$ {shlex.join(run.command(out))}\n")
    log.flush()
    return subprocess.Popen(run.command(out), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


class LaunchInterrupted(Exception):
  """SIGINT or SIGTERM stopped a local launch; the runs it stopped resume when relaunched."""

  def __init__(self, signum: int, interrupted: Sequence[str], not_started: int):
    self.signum, self.interrupted, self.not_started = signum, list(interrupted), not_started
    name = signal.Signals(signum).name
    super().__init__(
        f"{name}: stopped {len(interrupted)} run(s) ({', '.join(interrupted) or 'none'}; each "
        f"saves a checkpoint first once past start-up) and started none of the {not_started} "
        "waiting; relaunch the same command to resume them")


class _Signals:
  """SIGINT / SIGTERM noted, not raised: the launcher stops its runs in order."""

  def __init__(self):
    self.received: list[int] = []
    self._previous = {}

  def install(self) -> "_Signals":
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, lambda signum, _: self.received.append(signum))
      except ValueError:  # not the main thread: signals stay with whoever handles them
        pass
    return self

  def uninstall(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def launch_local(runs: Sequence[Run], out: str, parallel: int = 1,
                 poll_seconds: float = 0.2, seeds_together: bool = False
                 ) -> list[tuple[Run, int]]:
  """Runs what is not finished, at most `parallel` at a time; returns (run, exit code) pairs.

  `seeds_together`: the unfinished consecutive seeds of each row and task run
  as one process (`batch_seeds`).

  A run with `init_from` starts once the run it starts from has finished (it
  need not be among `runs`: an earlier sweep may have made it); if that run
  fails or is neither finished nor launched, the run is not started and counts
  as failed (exit code -1).

  Raises:
    LaunchInterrupted: on SIGINT or SIGTERM, once the runs it passed the signal
      to have saved a checkpoint and exited; no other run is started.
  """
  todo = [r for r in runs if not is_finished(r, out)]
  skipped = len(runs) - len(todo)
  if seeds_together:
    todo = batch_seeds(todo)
  print(f"{len(runs)} runs: {skipped} finished (skipped), {len(todo)} to run"
        f"{' (seeds together)' if seeds_together else ''}, {parallel} at a time.", flush=True)
  todo_names = {one.name for r in todo for one in r.seed_runs()}
  waiting = list(todo)
  outcomes, failed = [], set()
  running: dict[Any, tuple[Run, float]] = {}  # process -> (run, start time)

  def report(run: Run, code: int, message: str) -> None:
    outcomes.append((run, code))
    if code != 0 or not is_finished(run, out):
      failed.update(one.name for one in run.seed_runs())
    print(f"[{len(outcomes)}/{len(todo)}] {run.name}: {message}", flush=True)

  def reap() -> None:
    for process in [p for p in running if p.poll() is not None]:
      run, start = running.pop(process)
      code = process.returncode
      report(run, code, ("done" if code == 0 else
                         f"FAILED (exit {code}; see {run.workdir(out)}/log.txt)")
             + f" in {time.time() - start:.0f}s")

  signals = _Signals().install()
  try:
    while waiting or running:
      for run in list(waiting):
        if signals.received:
          break
        parent = run.parent()
        if parent is not None and not is_finished(parent, out):
          if parent.name in failed or parent.name not in todo_names:
            waiting.remove(run)
            report(run, -1, f"NOT RUN: {parent.name}, the run it starts from, "
                   + ("failed" if parent.name in failed else "is not finished and not in this launch"))
          continue  # its parent is still to run
        if len(running) >= max(parallel, 1):
          break
        waiting.remove(run)
        running[_start(run, out)] = (run, time.time())
      if signals.received:
        break
      if not running:
        if waiting:  # expand() rejects cycles, so a waiting run always has a parent to wait for
          raise RuntimeError(f"runs wait for parents that never run: {[r.name for r in waiting]}")
        continue
      time.sleep(poll_seconds)
      reap()
    if signals.received:
      reported = len(outcomes)
      passed = 0
      while running:
        # Each signal the launcher gets, its runs get once: the first saves a
        # checkpoint and exits, a second Ctrl-C stops them at once.
        for signum in signals.received[passed:]:
          for process in running:
            if process.poll() is None:
              process.send_signal(signum)
        passed = len(signals.received)
        time.sleep(poll_seconds)
        reap()
      interrupted = [run.name for run, _ in outcomes[reported:] if not is_finished(run, out)]
      raise LaunchInterrupted(signals.received[0], interrupted, len(waiting))
  finally:
    signals.uninstall()
  return outcomes


def write_slurm_array(runs: Sequence[Run], out: str, template: str,
                      seeds_together: bool = False) -> str:
  """Writes `OUT/runs.txt` (one command per line) and `OUT/sweep.sbatch`.

  The template is an sbatch script with `{num_tasks}` (the array size - 1),
  `{runs_file}` and `{out}` placeholders; each array task runs line
  `SLURM_ARRAY_TASK_ID + 1` of the runs file. Finished runs are left out, so a
  resubmission only runs what is missing. So are runs whose `init_from` run
  has not finished: submit again once the array is done (a warning says so).
  """
  todo = [r for r in runs if not is_finished(r, out)]
  later = [r for r in todo if r.parent() is not None and not is_finished(r.parent(), out)]
  if later:
    logging.warning("%d runs start from runs that have not finished (%s, ...); submit again "
                    "when this array is done to run them.", len(later), later[0].name)
  todo = [r for r in todo if r not in later]
  if seeds_together:
    todo = batch_seeds(todo)
  os.makedirs(out, exist_ok=True)
  runs_file = os.path.abspath(os.path.join(out, "runs.txt"))
  with open(runs_file, "w") as f:
    for run in todo:
      f.write(shlex.join(run.command(out, python="python")) + "\n")
  with open(template) as f:
    script = f.read().format(num_tasks=max(len(todo) - 1, 0), runs_file=runs_file,
                             out=os.path.abspath(out))
  path = os.path.join(out, "sweep.sbatch")
  with open(path, "w") as f:
    f.write(script)
  return path


# ----------------------------------------------------------------------------
# Collecting.
# ----------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
  """Student-t interval of the mean of `values` (seeds): `mean -+ t * std / sqrt(n)`."""
  mean, std = _mean_std(values)
  if len(values) < 2:
    return mean, mean
  half = scipy.stats.t.ppf(0.5 + level / 2, len(values) - 1) * std / len(values) ** 0.5
  return mean - half, mean + half


def compare(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
  """'better' / 'worse' when the 95% intervals do not overlap, else 'not distinguishable'."""
  if baseline is None or row is baseline:
    return ""
  up, down = ("better", "worse") if row.get("higher_is_better", True) else ("worse", "better")
  if row["ci_low"] > baseline["ci_high"]:
    return up
  if row["ci_high"] < baseline["ci_low"]:
    return down
  return "not distinguishable"


def leave_one_domain_out(domains: Sequence[str], *, target: bool = False,
                         name: str = "→{held_out}", **fields: Any) -> dict[str, dict[str, Any]]:
  """A grid's `tasks` for the leave-one-domain-out protocol (domain
  generalisation, multi-source adaptation): one column per domain, trained
  on all the others. The held-out domain is `test_domains` (read only by the
  final evaluation; `target` empty), or with `target=True` the unlabelled
  target (multi-source adaptation). `fields` are added to every column."""
  tasks = {}
  for held_out in domains:
    sources = ",".join(d for d in domains if d != held_out)
    columns = {"source": sources, **({"target": held_out, "test_domains": ""} if target
                                     else {"target": "", "test_domains": held_out})}
    tasks[name.format(held_out=held_out)] = {**columns, **fields}
  return tasks


def run_value(result: Mapping[str, Any], measure: str = "primary") -> float | None:
  """One run's number in a table: its `primary_metric` (`measure='primary'`:
  the target measure, or the held-out domains' under training-domain
  validation), or `'test_final'`: the held-out domains' with the final
  parameters (DomainBed's test-domain oracle). Fractions (accuracy, H-score)
  in percent, errors (MAE) as they are. Results written before
  `primary_metric` existed read as target accuracy."""
  primary = result.get("primary_metric") or {"name": "target_accuracy",
                                             "value": result.get("target_accuracy")}
  if measure == "primary":
    value = primary["value"]
  elif measure == "test_final":
    value = ((result.get("test") or {}).get("final") or {}).get("primary")
  else:
    raise ValueError(f"unknown measure {measure!r}: 'primary' or 'test_final'")
  if value is None:
    return None
  return value if primary["name"].endswith("mae") else 100 * value


def higher_is_better(result: Mapping[str, Any]) -> bool:
  return (result.get("primary_metric") or {}).get("higher_is_better", True)


def paired_difference(row: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                      level: float = 0.95) -> dict[str, Any] | None:
  """The mean per-seed difference `row - baseline` (points) over the seeds both
  ran, its Student-t interval, and 'better' / 'worse' when the interval
  excludes 0 ('not distinguishable' otherwise). None without two shared seeds.

  Runs of one seed share the seed of their data order and initialisers, so
  much of the seed-to-seed spread cancels in the difference: a paired
  comparison can separate methods whose intervals of the mean overlap.
  """
  if baseline is None or row is baseline:
    return None
  seeds = sorted(set(row["by_seed"]) & set(baseline["by_seed"]))
  if len(seeds) < 2:
    return None
  differences = [row["by_seed"][s] - baseline["by_seed"][s] for s in seeds]
  mean = statistics.fmean(differences)
  low, high = confidence_interval(differences, level)
  up, down = ("better", "worse") if row.get("higher_is_better", True) else ("worse", "better")
  verdict = up if low > 0 else down if high < 0 else "not distinguishable"
  return {"delta": mean, "low": low, "high": high, "verdict": verdict}


def _compare_fields(row: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                    suffix: str) -> dict[str, Any]:
  """A row's comparison columns with one baseline: `vs_<suffix>` (intervals
  of the mean) and the paired difference (`paired_vs_<suffix>`, `delta_...`)."""
  paired = paired_difference(row, baseline) or {}
  return {f"vs_{suffix}": compare(row, baseline),
          f"paired_vs_{suffix}": paired.get("verdict", ""),
          f"delta_vs_{suffix}": paired.get("delta"),
          f"delta_low_vs_{suffix}": paired.get("low"),
          f"delta_high_vs_{suffix}": paired.get("high")}


def _seed_of(directory: str) -> int | str:
  """`seed3` -> 3 (the sweep's run directories); other names are kept as they are."""
  return int(directory[4:]) if directory.startswith("seed") and directory[4:].isdigit() else directory


def collect(out: str, grid: dict[str, Any] | None = None,
            reference: dict[tuple[str, str], float] | None = None,
            measure: str = "primary") -> dict[str, Any]:
  """Gathers `results.json` files below `out` into per-(method, task) statistics.

  Args:
    out: the sweep directory.
    grid: the grid (row and column order, baselines).
    reference: published numbers by (method, task).
    measure: which number of each run (`run_value`).

  Returns:
    `{"rows": [{"method", "task", "seeds", "mean", "std", "wall_time_s"}],
      "methods": [...], "tasks": [...], "metric": name, "skipped": ["path (why)", ...]}`
    with fractions in percent; `skipped` lists the results.json files that do
    not parse or lack the measure (a run killed while writing, a file edited).
  """
  found: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
  unusable = []
  for root, _, files in sorted(os.walk(out)):
    if "results.json" not in files:
      continue
    rel = os.path.relpath(root, out).split(os.sep)
    if len(rel) != 3:
      continue
    path = os.path.join(root, "results.json")
    result, problem = read_results(path)
    if result is None:
      logging.warning("Skipping %s: it %s.", path, problem)
      unusable.append(f"{path} ({problem})")
      continue
    method, task, seed = rel
    found[(method, task)].append({**result, "_seed": _seed_of(seed)})
  if grid is not None:
    methods = list(grid["methods"])
    tasks = [_slug(t) for t in grid["tasks"]]
    names = {_slug(t): t for t in grid["tasks"]}
  else:
    methods = sorted({m for m, _ in found}, key=lambda m: (m != "source_only", m))
    tasks = sorted({t for _, t in found})
    names = {t: t for t in tasks}
  rows = []
  for method in methods:
    for task in tasks:
      results = found.get((method, task), [])
      if not results:
        continue
      results = [r for r in results if run_value(r, measure) is not None]
      if not results:
        continue
      values = [run_value(r, measure) for r in results]
      mean, std = _mean_std(values)
      low, high = confidence_interval(values)
      rows.append({"method": method, "task": names[task], "seeds": len(results), "mean": mean,
                   "std": std, "ci_low": low, "ci_high": high,
                   "source_mean": _mean_std([_source_value(r) for r in results])[0],
                   "wall_time_s": statistics.fmean(r.get("wall_time_s", float("nan")) for r in results),
                   "reference": (reference or {}).get((method, names[task])),
                   "by_seed": {r["_seed"]: v for r, v in zip(results, values)},
                   "higher_is_better": higher_is_better(results[0]),
                   "metric": _metric_name(results[0], measure),
                   "runs": results})
  task_names = [names[t] for t in tasks]
  if len(task_names) > 1:
    rows += _average_rows(rows, methods, task_names)
  by_key = {(r["method"], r["task"]): r for r in rows}
  baselines = (grid or {}).get("baselines", BASELINES)
  table = {"rows": rows, "methods": methods, "tasks": task_names,
           "metric": rows[0]["metric"] if rows else _metric_name({}, measure),
           "skipped": unusable}
  if isinstance(baselines, Mapping):  # one baseline per row
    table["baseline_of"] = dict(baselines)
    for row in rows:
      row["baseline"] = baselines.get(row["method"], "")
      row.update(_compare_fields(row, by_key.get((row["baseline"], row["task"])), "baseline"))
  else:
    table["baselines"] = list(baselines)
    for row in rows:
      for baseline in baselines:
        row.update(_compare_fields(row, by_key.get((baseline, row["task"])), baseline))
  return table


AVERAGE = "Avg"


def _average_rows(rows: list[dict[str, Any]], methods: Sequence[str],
                  tasks: Sequence[str]) -> list[dict[str, Any]]:
  """Per method with runs in every task, a row for the average over tasks
  (task `AVERAGE`): each seed's mean over the tasks, then the statistics of
  those per-seed means over the seeds run in every task, so that the average
  has its own interval and pairs with the baseline's average seed by seed
  (as DomainBed averages a trial's held-out domains)."""
  by_key = {(r["method"], r["task"]): r for r in rows}
  out = []
  for method in methods:
    parts = [by_key.get((method, task)) for task in tasks]
    if not all(parts):
      continue
    seeds = sorted(set.intersection(*(set(p["by_seed"]) for p in parts)), key=str)
    if not seeds:
      continue
    by_seed = {s: statistics.fmean(p["by_seed"][s] for p in parts) for s in seeds}
    values = list(by_seed.values())
    mean, std = _mean_std(values)
    low, high = confidence_interval(values)
    references = [p["reference"] for p in parts]
    out.append({"method": method, "task": AVERAGE, "seeds": len(seeds), "mean": mean,
                "std": std, "ci_low": low, "ci_high": high,
                "source_mean": statistics.fmean(p["source_mean"] for p in parts),
                "wall_time_s": statistics.fmean(p["wall_time_s"] for p in parts),
                "reference": (statistics.fmean(references)
                              if all(r is not None for r in references) else None),
                "by_seed": by_seed, "higher_is_better": parts[0]["higher_is_better"],
                "metric": parts[0]["metric"], "runs": []})
  return out


# Rows a collected table compares every method with, unless the grid names its
# own (when the grid has them).
BASELINES = ("source_only", "adabn")


def _source_value(result: Mapping[str, Any]) -> float:
  """A run's measure on the labelled domains' evaluation splits (percent for fractions)."""
  report = result.get("source_report") or {"primary": result.get("source_accuracy")}
  value = report.get("primary", report.get("accuracy"))
  if value is None:
    return float("nan")
  name = (result.get("primary_metric") or {}).get("name", "")
  return value if name.endswith("mae") else 100 * value


_METRIC_TEXT = {"accuracy": "accuracy (%)", "h_score": "H-score (%)", "mae": "mean absolute error"}


def _metric_name(result: Mapping[str, Any], measure: str) -> str:
  """What a table's numbers are, in words."""
  name = (result.get("primary_metric") or {}).get("name", "target_accuracy")
  where, _, metric = name.partition("_")
  text = _METRIC_TEXT.get(metric, metric)
  if where == "test":
    selection = ("final parameters (test-domain oracle)" if measure == "test_final"
                 else "checkpoint chosen by training-domain validation")
    return f"held-out domain {text}, {selection}"
  return f"target {text} on the target evaluation split"


def _comparison_fields(table: Mapping[str, Any]) -> list[str]:
  """The comparison keys of a collected table's rows (and CSV columns)."""
  suffixes = (["baseline"] if "baseline_of" in table
              else list(table.get("baselines", BASELINES)))
  fields = ["baseline"] if "baseline_of" in table else []
  for suffix in suffixes:
    fields += [f"{k}_{suffix}" for k in ("vs", "paired_vs", "delta_vs", "delta_low_vs",
                                         "delta_high_vs")]
  return fields


def read_reference(path: str) -> dict[tuple[str, str], float]:
  """Published numbers: a CSV with columns `method,task` and `accuracy` (percent)
  or `mae` (regression errors)."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  column = next((c for c in ("accuracy", "mae") if rows and c in rows[0]), None)
  if column is None:
    raise ValueError(f"{path}: expected columns method,task and accuracy or mae")
  return {(row["method"], row["task"]): float(row[column]) for row in rows}


def _decimals(table: Mapping[str, Any]) -> int:
  """Decimals a table shows: errors (MAE, in the factors' units) 3, percentages 1."""
  return 3 if "absolute error" in table.get("metric", "") else 1


def render_markdown(table: dict[str, Any], title: str) -> str:
  """Methods as rows, tasks as columns (`mean ± std`), an Avg column, wall time."""
  by_key = {(r["method"], r["task"]): r for r in table["rows"]}
  tasks = table["tasks"]
  multi = len(tasks) > 1
  has_reference = any(r["reference"] is not None for r in table["rows"])
  digits = _decimals(table)
  source = "source MAE" if digits == 3 else "source acc."
  header = ["method"] + tasks + (["Avg"] if multi else []) + [source, "seeds", "wall time / run"]
  if has_reference:
    header.insert(len(tasks) + 1 + int(multi), "reference Avg" if multi else "reference")
  lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method in table["methods"]:
    rows = [by_key.get((method, t)) for t in tasks]
    if not any(rows):
      continue
    cells = [method] + [f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}" if r else "–"
                        for r in rows]
    present = [r for r in rows if r]
    if multi:
      average = by_key.get((method, AVERAGE))
      cells.append(f"{average['mean']:.{digits}f} ± {average['std']:.{digits}f}" if average
                   else "–")
    if has_reference:
      refs = [r["reference"] for r in present if r["reference"] is not None]
      cells.append(f"{statistics.fmean(refs):.{digits}f}" if refs and len(refs) == len(tasks)
                   else "–")
    cells.append(f"{statistics.fmean(r['source_mean'] for r in present):.{digits}f}")
    cells.append(str(min(r["seeds"] for r in present)))
    cells.append(f"{statistics.fmean(r['wall_time_s'] for r in present):.0f} s")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  metric = table.get("metric", "target accuracy (%) on the target evaluation split")
  lines.append(f"{metric[0].upper()}{metric[1:]}, mean ± std over seeds; `source acc.` is the "
               "same measure on the labelled domains' evaluation splits."
               + (" `Avg`: each seed's mean over the columns, then mean ± std over the seeds "
                  "run in every column." if multi else ""))
  comparisons = _render_comparisons(table)
  if comparisons:
    lines += ["", comparisons]
  return "\n".join(lines) + "\n"


def _render_comparisons(table: dict[str, Any]) -> str:
  """Per task: the 95% interval of each method and its verdict against the baselines."""
  methods = {r["method"] for r in table["rows"]}
  digits = _decimals(table)

  def paired(r, suffix):
    if not r[f"paired_vs_{suffix}"]:
      return "–"
    return (f"{r[f'delta_vs_{suffix}']:+.{digits}f} [{r[f'delta_low_vs_{suffix}']:+.{digits}f}, "
            f"{r[f'delta_high_vs_{suffix}']:+.{digits}f}] {r[f'paired_vs_{suffix}']}")

  if "baseline_of" in table:
    if not set(table["baseline_of"].values()) & methods:
      return ""
    columns = ["baseline", "vs baseline", "paired Δ vs baseline"]
    cells = lambda r: [r["baseline"] or "–", r["vs_baseline"] or "–", paired(r, "baseline")]
  else:
    present = [b for b in table.get("baselines", BASELINES) if b in methods]
    if not present:
      return ""
    columns = [c for b in present for c in (f"vs {b}", f"paired Δ vs {b}")]
    cells = lambda r: [c for b in present for c in (r[f"vs_{b}"] or "–", paired(r, b))]
  out = []
  averaged = any(r["task"] == AVERAGE for r in table["rows"])
  for task in list(table["tasks"]) + ([AVERAGE] if averaged else []):
    rows = [r for r in table["rows"] if r["task"] == task]
    header = ["method", "mean", "95% interval", "seeds"] + columns
    out += [f"### {task}: 95% intervals and comparisons", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
      out.append("| " + " | ".join(
          [r["method"], f"{r['mean']:.{digits}f}",
           f"[{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]",
           str(r["seeds"])] + cells(r)) + " |")
    out.append("")
  out.append("Intervals: Student-t over seeds. `vs`: a method is `better` or `worse` than "
             "a baseline only when the two intervals do not overlap; otherwise the data "
             "cannot tell them apart (`not distinguishable`). `paired Δ`: the mean "
             f"difference {'of the error' if digits == 3 else 'in points'} from the "
             "baseline's run of the same seed, its 95% "
             "interval, and `better` / `worse` when that interval excludes 0 (pairing "
             "by seed removes the spread the two runs share; for errors, lower is better).")
  return "\n".join(out)


# ----------------------------------------------------------------------------
# Selection across runs.
# ----------------------------------------------------------------------------


# Rows no unsupervised choice may pick: trained on target labels.
NOT_CANDIDATES = ("target_oracle",)


def family(method: str) -> str:
  """Rows `<method>@<setting>` (e.g. `dann@0.3`) are settings of one method."""
  return method.split("@")[0]


def config_scores(row: Mapping[str, Any], validator: str) -> float | None:
  """A row's (configuration's) score: the mean over seeds of each run's final
  value of `validator` (`oracle`: its target accuracy)."""
  values = []
  for run in row["runs"]:
    final = run.get("validators_final") or {}
    if validator == "oracle":
      # The task's target measure: accuracy, or a regression error.
      values.append(run["target_accuracy"] if run.get("target_accuracy") is not None
                    else run_value(run))
    elif validator == "source_accuracy" and validator not in final:
      # results.json files written before the validator's own value was kept
      # (the evaluation split's source accuracy stood in for it).
      values.append(run["source_accuracy"])
    else:
      value = final.get(validator)
      if value is None or value != value:
        return None
      values.append(value)
  return statistics.fmean(values) if values else None


def select_configs(table: dict[str, Any], validator: str, *, within_family: bool = False
                   ) -> list[dict[str, Any]]:
  """Per task (and per method family with `within_family`): the configuration
  `validator` picks, next to the oracle's pick and the mean over configurations."""
  if validator not in validators.VALIDATORS:
    raise ValueError(f"--select={validator!r}: choose one of {sorted(validators.VALIDATORS)}")
  higher = validators.VALIDATORS[validator].higher_is_better
  out = []
  task_higher = all(r.get("higher_is_better", True) for r in table["rows"])
  if validator == "oracle":
    higher = task_higher  # the task's measure: lower is better for errors
  averaged = any(r["task"] == AVERAGE for r in table["rows"])
  for task in list(table["tasks"]) + ([AVERAGE] if averaged else []):
    rows = [r for r in table["rows"] if r["task"] == task]
    groups = collections.defaultdict(list)
    for r in rows:
      if r["method"] in NOT_CANDIDATES:
        continue
      groups[family(r["method"]) if within_family else "all"].append(r)
    for group, members in groups.items():
      if within_family and len(members) < 2:
        continue  # a method run at one setting leaves nothing to choose
      scored = [(config_scores(r, validator), r) for r in members]
      scored = [(v, r) for v, r in scored if v is not None]
      if not scored:
        continue
      pick = (max if higher else min)(scored, key=lambda vr: vr[0])[1]
      oracle = (max if task_higher else min)(members, key=lambda r: r["mean"])
      out.append({"task": task, "group": group, "validator": validator,
                  "pick": pick["method"], "pick_accuracy": pick["mean"],
                  "oracle_pick": oracle["method"], "oracle_accuracy": oracle["mean"],
                  "mean_accuracy": statistics.fmean(r["mean"] for r in members),
                  "configs": len(members)})
  return out


def render_selection(selections: list[dict[str, Any]]) -> str:
  header = ["task", "among", "validator", "picks", "its accuracy", "oracle picks",
            "oracle accuracy", "mean of configs"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in selections:
    lines.append("| " + " | ".join([
        s["task"], f"{s['group']} ({s['configs']})", s["validator"], s["pick"],
        f"{s['pick_accuracy']:.1f}", s["oracle_pick"], f"{s['oracle_accuracy']:.1f}",
        f"{s['mean_accuracy']:.1f}"]) + " |")
  return "\n".join(lines) + "\n"


def write_tables(prefix: str, table: dict[str, Any], title: str) -> tuple[str, str]:
  """Writes `prefix.md` and `prefix.csv`."""
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  md_path, csv_path = prefix + ".md", prefix + ".csv"
  with open(md_path, "w") as f:
    f.write(render_markdown(table, title))
  with open(csv_path, "w", newline="") as f:
    fields = ["method", "task", "seeds", "mean", "std", "ci_low", "ci_high", "source_mean",
              "wall_time_s", "reference"] + _comparison_fields(table)
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table["rows"])
  return md_path, csv_path


def selection_section(table: dict[str, Any], validator_names: Sequence[str]) -> str:
  """The markdown section of what each validator in `validator_names` ('all':
  every one) picks, among all rows and within each method family."""
  names = sorted(validators.VALIDATORS) if list(validator_names) == ["all"] else validator_names
  selections = [s for within in (False, True) for name in names
                for s in select_configs(table, name, within_family=within)]
  return ("\n### Configurations chosen without target labels\n\n"
          "Each validator's pick (the configuration with its best mean final score over "
          "seeds) and that configuration's target accuracy, beside the oracle's pick "
          "(best target accuracy) and the mean over the configurations.\n\n"
          + render_selection(selections))
