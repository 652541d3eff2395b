"""Command-line entry point.

    python -m tljax.main --config=configs/<file>.py:<arg> --workdir=DIR [--config.key=value ...]

Runs `tljax.train.train_and_evaluate`; rerunning the same command resumes from
the latest checkpoint in DIR.
"""

from __future__ import annotations

import ast
import logging as std_logging
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Free-form keyword dicts: any key may be set on the command line, also one the
# config file does not list (e.g. --config.model.backbone_kwargs.drop_path=0.1).
_OPEN_DICTS = ("model.backbone_kwargs", "features.backbone_kwargs")
_open_overrides: list[tuple[str, str, str]] = []


def _take_open_overrides(argv: list[str]) -> list[str]:
  """Removes `--config.<open dict>.<key>=<value>` flags from `argv` into
  `_open_overrides`; `main` applies them after the config is parsed. (Runs
  before the config flag is defined: that flag reads its overrides from
  `sys.argv` there.)"""
  kept = []
  for arg in argv:
    match = re.fullmatch(r"--config\.(%s)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)" %
                         "|".join(re.escape(d) for d in _OPEN_DICTS), arg, flags=re.S)
    if match:
      _open_overrides.append(match.groups())
    else:
      kept.append(arg)
  return kept


if __name__ == "__main__":
  sys.argv = _take_open_overrides(sys.argv)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, with an optional ':arg'.", lock_config=True)
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
  """Console: tljax's own INFO lines (progress, evaluation), everyone's warnings."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or f"{os.sep}tljax{os.sep}" in record.pathname


def _should_initialize_distributed() -> bool:
  if _DISTRIBUTED.value != "auto":
    return _DISTRIBUTED.value == "on"
  if _COORDINATOR.value:
    return True
  env = os.environ
  # Environments jax.distributed.initialize() reads by itself, when they hold >1 process.
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


_started = False
def _apply_open_overrides(config) -> None:
  for dotted, key, text in _open_overrides:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a plain string
    node = config
    for part in dotted.split("."):
      if part not in node:
        raise ValueError(f"--config.{dotted}.{key}: the config has no {dotted}")
      node = node[part]
    with node.ignore_type():
      node.unlock()
      node[key] = value


def main(argv):
  global _started
  _started = True
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only builds/reads data here
  logging.get_absl_handler().addFilter(_TljaxInfoOnly())
  import jax  # pylint: disable=g-import-not-at-top

  if _should_initialize_distributed():
    # CPU-only processes need a collectives backend; accelerators bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)

  from tljax import train, workdir  # pylint: disable=g-import-not-at-top
  try:
    config = _CONFIG.value
    config.keys()  # the flag loads the file lazily: a missing one fails here
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"error: {_config_load_error(e)}")
  try:
    _apply_open_overrides(config)
    train.train_and_evaluate(config, _WORKDIR.value, allow_changes=_ALLOW_CHANGES.value)
  except (ValueError, OSError, train.NonFiniteError, workdir.WorkdirInUseError) as e:
    # Bad input, a busy workdir, a file system that refuses, or a diverged run:
    # one line that says what and how to fix it.
    sys.exit(f"error: {' '.join(str(e).split()) if _one_line(e) else e}")


def _one_line(error: Exception) -> bool:
  """Messages are one line, except listings (files searched, parameters that
  do not fit) that are clearer as lists."""
  return "\n  " not in str(error)


def _config_import_roots(argv: list[str]) -> list[str]:
  """Folders from which a config file's own imports (`from configs import
  default`) resolve, whatever the working directory: the one above the config
  file's package, and this checkout's root."""
  roots = []
  for i, arg in enumerate(argv):
    path = None
    if arg.startswith("--config="):
      path = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    if path:
      folder = os.path.dirname(os.path.abspath(path.split(":")[0]))
      while os.path.exists(os.path.join(folder, "__init__.py")):
        folder = os.path.dirname(folder)
      roots.append(folder)
  roots.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return roots


def _config_load_error(error: BaseException) -> str:
  """One line for a config file that does not load: its path, and the last
  line of what went wrong (e.g. `ValueError: unknown task 'x': choose one of ...`)."""
  text = str(error)
  for cause in (error.__cause__, error.__context__):
    if cause is not None:
      text = f"{text}\n{cause}"
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  missing = next((l for l in lines if "No such file or directory" in l), None)
  if missing is not None:
    return (f"--config: the config file does not exist ({missing.split(']')[-1].strip()}, from "
            f"{os.getcwd()}); pass a config file, e.g. --config=configs/dann.py:digits")
  spec = next((a for a in sys.argv if a.startswith("--config=")), "--config")
  reason = next((l for l in reversed(lines) if re.match(r"[A-Za-z_.]*(Error|Exception)\b", l)),
                lines[-1] if lines else type(error).__name__)
  return f"{spec}: the config does not load: {reason}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the config file's imports resolvable from any
  working directory and a config that does not load reported in one line
  (absl prints the config's traceback)."""
  for root in reversed(_config_import_roots(argv)):
    if root not in sys.path:
      sys.path.insert(0, root)
  try:
    return flags.FLAGS(argv)
  except OSError as e:  # a missing config file, met while applying --config.* overrides
    sys.exit(f"error: {_config_load_error(e)}")
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):
      sys.exit(f"error: {_config_load_error(e)}")
    sys.exit(f"error: {' '.join(str(e).split())}. Pass --helpfull to see the flags.")


def run() -> None:
  """`app.run(main)`, turning a bad `--config.*` override, a config that does not
  load, or Ctrl-C into a one-line error."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    # A run in its training loop saves a checkpoint at the first Ctrl-C; this is
    # a second one, or one during start-up.
    print("error: interrupted (Ctrl-C); rerun the same command to resume from the latest "
          "checkpoint, if there is one", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except (KeyError, AttributeError) as e:
    if _started:
      raise
    message = str(e)
    key = re.search(r"'([A-Za-z0-9_]+)", message)
    suggestion = re.search(r'Did you mean "([^"]+)"', message)
    sys.exit("error: a --config.* override names a field the config does not have"
             + (f": {key.group(1)!r}" if key else f" ({message})")
             + (f"; did you mean {suggestion.group(1)!r}?" if suggestion else ".")
             + " The config file lists every field.")


if __name__ == "__main__":
  run()
