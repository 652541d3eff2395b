"""`python -m tljax.sweep {launch,collect,list}`: the command line of `tljax.sweep`.

    python -m tljax.sweep launch --grid=experiments/grids/digits.py --out=DIR [--parallel=2]
        [--seeds_together]
    python -m tljax.sweep launch --grid=... --out=DIR --slurm=experiments/slurm/array.sbatch
    python -m tljax.sweep collect --out=DIR [--grid=...] [--to=PREFIX] [--reference=FILE.csv]
        [--select=snd,dev | --select=all] [--measure=primary|test_final]

The grid file, the runs and the tables are described in `tljax/sweep/__init__.py`.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

from absl import app, flags, logging

from tljax import errors
from tljax import sweep

_COMMAND = flags.DEFINE_enum("command", None, ["launch", "collect", "list"],
                             "What to do (also accepted as the first argument).")
_GRID = flags.DEFINE_string("grid", None, "Grid file defining get_grid() (FILE:ARG: get_grid(ARG)).")
_OUT = flags.DEFINE_string("out", None, "Sweep directory (one workdir per run below it).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at once when launching locally.")
_SLURM = flags.DEFINE_string("slurm", None,
                             "sbatch template: write an array job instead of running.")
_SUBMIT = flags.DEFINE_bool("submit", False,
                            "With --slurm: also call sbatch on the written script.")
_SEEDS_TOGETHER = flags.DEFINE_bool(
    "seeds_together", False, "launch / list: train the unfinished consecutive seeds of each row "
    "and task in one process (--config.num_seeds=K, tljax/seeds.py), into the same seed<k> "
    "workdirs.")
_ONLY = flags.DEFINE_string("only", None, "Regex: launch only runs whose name matches.")
_REFERENCE = flags.DEFINE_string("reference", None,
                                 "CSV of reference accuracies (method,task,accuracy).")
_TITLE = flags.DEFINE_string("title", None, "Title of the collected table.")
_TO = flags.DEFINE_string("to", None,
                          "Write the tables to TO.md and TO.csv (default OUT/results).")
_MEASURE = flags.DEFINE_enum(
    "measure", "primary", ["primary", "test_final"],
    "collect: each run's primary measure (the target's, or the held-out domains' under "
    "training-domain validation), or the held-out domains' with the final parameters "
    "(DomainBed's test-domain oracle).")
_SELECT = flags.DEFINE_list(
    "select", [], "collect: also pick, per task, the configuration each named validator "
    "(tljax/validators.py; 'all' for every one) would choose from unlabelled target data, "
    "among all rows and among the settings of each method (rows named method@setting).")


@errors.exits_on_bad_input
def main(argv):
  command = _COMMAND.value or (argv[1] if len(argv) > 1 else None)
  if command not in ("launch", "collect", "list"):
    raise app.UsageError("usage: python -m tljax.sweep {launch,collect,list} --grid=... --out=...")
  if not _OUT.value:
    raise app.UsageError("--out is required")
  grid = sweep.load_grid(_GRID.value) if _GRID.value else None
  if command in ("launch", "list"):
    if grid is None:
      raise app.UsageError(f"{command} needs --grid")
    runs = sweep.expand(grid)
    if _ONLY.value:
      runs = [r for r in runs if re.search(_ONLY.value, r.name)]
    if command == "list":
      if _SEEDS_TOGETHER.value:
        runs = sweep.batch_seeds([r for r in runs if not sweep.is_finished(r, _OUT.value)])
      for run in runs:
        print(("done  " if sweep.is_finished(run, _OUT.value) else "todo  ")
              + shlex.join(run.command(_OUT.value)))
      return
    if _SLURM.value:
      path = sweep.write_slurm_array(runs, _OUT.value, _SLURM.value,
                                     seeds_together=_SEEDS_TOGETHER.value)
      print(f"wrote {path}")
      if _SUBMIT.value:
        subprocess.run(["sbatch", path], check=True)
      return
    try:
      outcomes = sweep.launch_local(runs, _OUT.value, _PARALLEL.value,
                                    seeds_together=_SEEDS_TOGETHER.value)
    except sweep.LaunchInterrupted as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(128 + e.signum)
    failed = [r.name for r, code in outcomes if code != 0]
    if failed:
      logging.error("%d runs failed: %s", len(failed), ", ".join(failed))
      sys.exit(1)
    return
  reference = sweep.read_reference(_REFERENCE.value) if _REFERENCE.value else None
  table = sweep.collect(_OUT.value, grid, reference, measure=_MEASURE.value)
  prefix = _TO.value or os.path.join(_OUT.value, "results")
  md_path, csv_path = sweep.write_tables(
      prefix, table, _TITLE.value or os.path.basename(os.path.abspath(_OUT.value)))
  if _SELECT.value:
    with open(md_path, "a") as f:
      f.write(sweep.selection_section(table, _SELECT.value))
  with open(md_path) as f:
    print(f.read())
  print(f"wrote {md_path} and {csv_path}")
  if table["skipped"]:
    print(f"skipped {len(table['skipped'])} results.json file(s) that cannot be read: "
          + "; ".join(table["skipped"]) + " (rerun `launch` to redo those runs)")


if __name__ == "__main__":
  try:
    app.run(main)
  except KeyboardInterrupt:  # before the launcher took over SIGINT (loading the grid)
    print("error: interrupted (Ctrl-C) before any run started", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
