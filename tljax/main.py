"""Command-line entry point.

    python -m tljax.main --config=configs/<file>.py:<arg> --workdir=DIR [--config.key=value ...]

Runs `tljax.train.train_and_evaluate` (`tljax.seeds.train_and_evaluate` for
`--config.num_seeds=K`: K seeds in one process, DIR/seed<k> each); rerunning
the same command resumes from the latest checkpoint in DIR. A `--config.*`
override must name a field of the config file, except in the free-form
keyword dicts (`tljax.cli.OPEN_DICTS`, e.g.
`--config.model.backbone_kwargs.drop_path=0.1`), which take any key.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from tljax import cli
from tljax import errors
from tljax import workdir

# The command line the config flag reads its overrides from: the program's own
# without the open-dict overrides, which `parse_flags` sets aside (ml_collections
# reads this list when the flag is parsed).
_CONFIG_ARGV: list[str] = []

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with an optional ':arg'.", lock_config=True,
    sys_argv=_CONFIG_ARGV)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs that "
    "jax.distributed cannot detect from the environment (SLURM, TPU pods).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_ALLOW_CHANGES = flags.DEFINE_list(
    "allow_changes", [], "Config fields a resumed run may change from the run stored in "
    "the workdir (e.g. optimizer.learning_rate), or 'all'. Without it a changed field is an "
    "error naming it.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does when the flags above are given or "
    "a cluster environment (SLURM, TPU pod, Open MPI) is detected.")
flags.mark_flags_as_required(["config", "workdir"])


class _TljaxInfoOnly(std_logging.Filter):
  """Console: tljax's own INFO lines (losses, evaluation), clu's progress report
  (steps/s, ETA: `clu.periodic_actions.ReportProgress` logs it through its
  platform's work-unit notes), everyone's warnings."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING or f"{os.sep}tljax{os.sep}" in record.pathname
            or f"{os.sep}clu{os.sep}platform{os.sep}" in record.pathname)


def _should_initialize_distributed() -> bool:
  if _DISTRIBUTED.value != "auto":
    return _DISTRIBUTED.value == "on"
  if _COORDINATOR.value:
    return True
  env = os.environ
  # Environments jax.distributed.initialize() reads by itself, when they hold >1 process.
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def parse_flags(argv: list[str]) -> tuple[list[str], list[cli.OpenOverride]]:
  """`app.run`'s flags parser: the open-dict overrides set aside, absl parses the
  rest; `main` receives both. A `--config.*` override naming a field the config
  does not have is a one-line error."""
  # A config file's own imports (`from configs import default`) resolve from any
  # working directory.
  for root in reversed(cli.config_import_roots(argv)):
    if root not in sys.path:
      sys.path.insert(0, root)
  argv, open_overrides = cli.split_open_overrides(argv)
  _CONFIG_ARGV[:] = argv
  try:
    return flags.FLAGS(argv), open_overrides
  except (KeyError, AttributeError) as e:  # raised by ml_collections for an unknown field
    sys.exit(cli.unknown_field_message(e))
  except OSError as e:  # a missing config file, met while applying --config.* overrides
    sys.exit(f"error: {cli.config_load_error(e, argv)}")
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):
      sys.exit(f"error: {cli.config_load_error(e, argv)}")
    sys.exit(f"error: {' '.join(str(e).split())}. Pass --helpfull to see the flags.")


def main(args: tuple[list[str], list[cli.OpenOverride]]) -> None:
  argv, open_overrides = args
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only builds/reads data here
  logging.get_absl_handler().addFilter(_TljaxInfoOnly())
  if _should_initialize_distributed():
    # CPU-only processes need a collectives backend; accelerators bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  # Imported once the TensorFlow options above are set: TensorFlow, which the
  # trainer loads when a run starts writing (clu's TensorBoard writer) and the
  # dataset builders when they build, reads them when it loads.
  from tljax import seeds, train  # pylint: disable=g-import-not-at-top

  try:
    config = _CONFIG.value
    config.keys()  # the flag may load the file lazily: one that does not load fails here
  except (KeyError, AttributeError) as e:  # an override naming an unknown field
    sys.exit(cli.unknown_field_message(e))
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"error: {cli.config_load_error(e, sys.argv)}")
  try:
    cli.apply_open_overrides(config, open_overrides)
    seeds.train_and_evaluate(config, _WORKDIR.value, allow_changes=_ALLOW_CHANGES.value)
  except (ValueError, OSError, train.NonFiniteError, workdir.WorkdirInUseError) as e:
    # Bad input, a busy workdir, a file system that refuses, or a diverged run:
    # one line that says what and how to fix it.
    sys.exit(errors.one_line_error(e))


class _StartUpInterrupt:
  """The SIGINT handler until the training loop takes over: Python's default
  (KeyboardInterrupt), and a note of it, which the loop reads when it
  installs its own (`tljax.train._StopRequest`): a Ctrl-C that a library
  swallowed while the run started (seen once under load) still stops it."""

  def __init__(self):
    self.received = False

  def __call__(self, signum, frame):
    del signum, frame
    self.received = True
    raise KeyboardInterrupt


def run() -> None:
  """`app.run(main)`, with Ctrl-C during start-up (or a second one) as one line."""
  signal.signal(signal.SIGINT, _StartUpInterrupt())
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    # A run in its training loop saves a checkpoint at the first Ctrl-C; this is
    # a second one, or one during start-up.
    print("error: interrupted (Ctrl-C); rerun the same command to resume from the latest "
          "checkpoint, if there is one", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
  run()
