"""A run's workdir: who may write it, what run it holds, and reading it back.

- `WorkdirLock`: one run at a time per workdir. The lock file names the run
  (host, pid, and in a multi-process run the coordinator); a lock left by a
  killed process on this host is detected (its pid is gone) and taken over
  with a log line, and so is an empty or unreadable one once it is older than
  `LOCK_GRACE_S`; a live one gets a one-line refusal. The lock is an
  exclusively created file, which local and network POSIX filesystems honour;
  object stores (`gs://`) offer no such primitive, so there two runs are not
  kept apart (documented in the README).
- `check_run_identity` / `write_run_identity`: the config that defines a run
  (everything but fields that may change on a resume, `RESUMABLE_FIELDS`) is
  stored in `run.json`, with every change a resume was allowed to make and the
  step it was made at. A resume with a different config is refused, naming
  each changed field, unless the change is allowed explicitly; the check
  writes nothing, and the run writes `run.json` only once its checkpoint has
  restored. Until a first checkpoint exists there is nothing to resume, so
  another config simply starts the run afresh. A workdir that holds
  checkpoints, metrics or results but no `run.json` is not taken over.
- `restore_latest`: the latest checkpoint that restores, falling back past
  corrupt or partial ones (moved aside, not deleted) with a warning;
  `checksums` / `verify_checksums` catch a checkpoint whose bytes changed
  after it was written, which would otherwise restore without an error.
- `read_config` / `latest_state`: what comes after training (feature
  extraction, analysis, tests) reads a workdir on any machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import zlib
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

LOCK_NAME = ".lock"
IDENTITY_NAME = "run.json"
# A lock file is written in the instant after it is created; one still empty
# or unreadable after this long was left by a process killed in that instant
# (or made by hand), and is taken over.
LOCK_GRACE_S = 5.0
# Files only a tljax run writes: a workdir holding any of them without a
# run.json is someone else's.
RUN_FILES = ("metrics.jsonl", "results.json")
# Fields a resumed run may change: how long it runs, how often it logs,
# evaluates and saves, where it finds data and how it reads it, and how the
# convolutions are computed (the same function, rounded differently).
# Everything else defines the run's numbers.
RESUMABLE_FIELDS = ("total_steps", "log_every", "eval_every", "checkpoint_every",
                    "keep_checkpoints", "eval_batch_size", "data_dir", "manual_dir",
                    "data.num_threads", "data.num_workers", "data.cache",
                    # permissions checked when the run starts, not what it computes
                    "data.allow_repeats_in_batch",
                    # how the convolutions are computed, not what they compute
                    "model.backbone_kwargs.conv_impl",
                    # whether a run must start from a trained model, and how:
                    # checked when it starts, no part of what it computes
                    "model.init_required", "model.init_recipe")


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir."""


class RunMismatchError(ValueError):
  """The config differs from the run the workdir holds."""


class ForeignWorkdirError(ValueError):
  """The workdir holds files of a run whose identity is unknown."""


class CorruptCheckpointError(ValueError):
  """A checkpoint restored, but its arrays differ from those that were saved."""


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: pass the workdir of a tljax run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# ----------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Held by one run (process 0 of it) for the run's lifetime.

  Args:
    workdir: the directory.
    run_id: identifies the run; processes of one multi-process run share it
      (the coordinator address), so only another run is refused.
  """

  def __init__(self, workdir: str, run_id: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.run_id = run_id
    self.owner = {"run": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    self._held = False

  def acquire(self) -> "WorkdirLock":
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read_holder()
        if holder is None:
          self._take_over_unreadable()
          continue
        if self._is_stale(holder):
          logging.warning("Taking over the lock of %s: its process %s on %s is gone.",
                          self.path, holder.get("pid"), holder.get("host"))
          with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
          continue
        raise WorkdirInUseError(
            f"workdir {os.path.dirname(self.path)!r} is in use by another run (pid "
            f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); wait "
            f"for it to finish or use another --workdir (if that run is dead, delete {self.path})")
      with os.fdopen(fd, "w") as f:
        json.dump(self.owner, f)
      self._held = True
      return self
    raise WorkdirInUseError(f"could not take the lock {self.path}: it keeps reappearing, so "
                            "another run is starting in this workdir; if none is, delete "
                            f"{self.path} and rerun")

  def _take_over_unreadable(self) -> None:
    """An empty or unreadable lock file: a run writing it right now, or one
    killed while it did. Waits until it is `LOCK_GRACE_S` old, then removes it."""
    try:
      age = time.time() - os.path.getmtime(self.path)
    except FileNotFoundError:
      return  # removed meanwhile: try again
    if age < LOCK_GRACE_S:
      time.sleep(LOCK_GRACE_S - age)
      if self._read_holder() is not None or not os.path.exists(self.path):
        return  # its run wrote it, or released it: decide again
      age = LOCK_GRACE_S
    logging.warning("Taking over the lock %s: it is empty or unreadable %.0fs after it was "
                    "created (left by a run killed while taking it, or not a tljax lock).",
                    self.path, age)
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)

  def _read_holder(self) -> dict[str, Any] | None:
    try:
      with open(self.path) as f:
        holder = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
      return None
    # What a tljax run writes; anything else is no lock of a run.
    if not (isinstance(holder, dict) and isinstance(holder.get("pid"), int)
            and isinstance(holder.get("host"), str)):
      return None
    return holder

  def _is_stale(self, holder: Mapping[str, Any]) -> bool:
    if holder.get("run") == self.run_id and holder.get("pid") == os.getpid():
      return True  # this very process, e.g. a run restarted in one Python session
    if holder.get("host") != socket.gethostname():
      return False  # no way to check a process on another host
    return not _pid_alive(int(holder.get("pid", -1)))

  def release(self) -> None:
    if self._held:
      holder = self._read_holder()
      if holder is not None and holder.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
      self._held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# ----------------------------------------------------------------------------
# Run identity.
# ----------------------------------------------------------------------------


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _canonical(value: Any) -> Any:
  """JSON round trip: tuples and lists compare equal, as they are stored."""
  return json.loads(json.dumps(value, default=str))


def run_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The flattened config without `RESUMABLE_FIELDS`."""
  flat = _flatten(config.to_dict())
  return {k: _canonical(v) for k, v in sorted(flat.items()) if k not in RESUMABLE_FIELDS}


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds a finished checkpoint (a step directory)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def read_run_record(workdir: str) -> dict[str, Any] | None:
  """`run.json`: `{'identity': {field: value}, 'changes': [{'step', 'field', 'from',
  'to'}, ...]}` (None when absent). Files written before the changes were
  kept hold the identity alone."""
  path = os.path.join(workdir, IDENTITY_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ForeignWorkdirError(
        f"{path} is not readable JSON ({e}); delete it to check the run against the "
        "workdir's config.json instead, or use a new --workdir") from e
  if isinstance(stored, dict) and set(stored) == {"identity", "changes"}:
    return stored
  return {"identity": stored, "changes": []}


def check_run_identity(workdir: str, config: ml_collections.ConfigDict, *,
                       allow_changes: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Compares `config` with the run stored in `workdir`; writes nothing.

  Args:
    workdir: the run's directory.
    config: the config of this invocation.
    allow_changes: fields that may differ (e.g. `('optimizer.learning_rate',)`,
      or `('all',)`).

  Returns:
    The allowed changes, `[{'field', 'from', 'to'}]` (for `write_run_identity`).

  Raises:
    RunMismatchError: naming every changed field and the way forward.
    ForeignWorkdirError: checkpoints, metrics or results without a `run.json`
      (and, for checkpoints, without a `config.json` to tell their run).
  """
  record = read_run_record(workdir)
  resuming = has_checkpoints(workdir)
  identity = run_identity(config)
  where = IDENTITY_NAME
  if record is None:
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(workdir, name))]
    if resuming:
      # run.json was lost; config.json (written with it) still tells the run.
      if not os.path.exists(os.path.join(workdir, "config.json")):
        raise ForeignWorkdirError(
            f"workdir {workdir!r} holds checkpoints but neither {IDENTITY_NAME} nor "
            "config.json, so the run they belong to is unknown; use a new --workdir, or "
            "move its checkpoints/ away to start over there")
      record = {"identity": run_identity(read_config(workdir)), "changes": []}
      where = f"config.json ({IDENTITY_NAME} is missing)"
    elif present:
      raise ForeignWorkdirError(
          f"workdir {workdir!r} holds {' and '.join(present)} but no {IDENTITY_NAME}: files of "
          "another run or program, which this run would overwrite; use a new --workdir, or "
          "move them away")
    else:
      return []
  if not resuming:
    if record["identity"] != identity:
      logging.info("%s holds no checkpoint yet: the run starts afresh with this config.", workdir)
    return []
  stored = record["identity"]
  changed = sorted(k for k in set(stored) | set(identity) if stored.get(k, "<absent>")
                   != identity.get(k, "<absent>"))
  allowed = [k for k in changed if "all" in allow_changes or k in allow_changes]
  refused = [k for k in changed if k not in allowed]
  if refused:
    shown = "; ".join(f"{k}: {stored.get(k, '<absent>')!r} -> {identity.get(k, '<absent>')!r}"
                      for k in refused[:8])
    more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
    raise RunMismatchError(
        f"workdir {workdir!r} holds a run with another config (by its {where}): {shown}{more}. "
        f"Use a new --workdir for a new run, or resume with the stored config, or allow the "
        f"change explicitly with --allow_changes={','.join(refused)}")
  return [{"field": k, "from": stored.get(k, "<absent>"), "to": identity.get(k, "<absent>")}
          for k in allowed]


def write_run_identity(workdir: str, config: ml_collections.ConfigDict, *,
                       changes: Sequence[Mapping[str, Any]], step: int) -> list[dict[str, Any]]:
  """Stores the run's identity in `run.json` once its checkpoint has restored,
  adding `changes` (from `check_run_identity`) made at `step` to those of
  earlier resumes. Returns every change the run was allowed, in order."""
  record = None
  if has_checkpoints(workdir):
    record = read_run_record(workdir)
  history = list(record["changes"]) if record else []
  if changes:
    logging.warning("Resuming %s at step %d with changed fields (allowed): %s", workdir, step,
                    ", ".join(c["field"] for c in changes))
    history += [{"step": int(step), **change} for change in changes]
  _write_json(os.path.join(workdir, IDENTITY_NAME),
              {"identity": run_identity(config), "changes": history})
  return history


def _write_json(path: str, value: Any) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, default=str)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------


def restore_latest(manager, restore: Callable[[int], Any], *, move_aside_dir: str | None,
                   is_main: bool = True) -> tuple[Any, int | None]:
  """The latest checkpoint that restores, trying older ones past failures.

  Args:
    manager: an `orbax.checkpoint.CheckpointManager`.
    restore: `step -> state`; raises on a corrupt checkpoint.
    move_aside_dir: where a checkpoint that failed to restore is moved (so
      that the resumed run can save that step again); None leaves it.
    is_main: only process 0 moves directories.

  Returns:
    `(state, step)`, or `(None, None)` when there is no checkpoint.

  Raises:
    ValueError: checkpoints exist but none restores.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = restore(step)
    except Exception as e:  # pylint: disable=broad-except
      first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      failures.append(f"step {step} ({type(e).__name__}: {first_line})")
      logging.warning("The checkpoint of step %d does not restore (%s: %s); trying an older one.",
                      step, type(e).__name__, first_line)
      continue
    if failures and move_aside_dir and is_main:
      os.makedirs(move_aside_dir, exist_ok=True)
      for failed in steps[:steps.index(step)]:
        source = os.path.join(str(manager.directory), str(failed))
        target = os.path.join(move_aside_dir, f"{failed}.{int(time.time())}")
        if os.path.exists(source):
          shutil.move(source, target)
          logging.warning("Moved the unreadable checkpoint of step %d to %s.", failed, target)
      manager.reload()
    return state, step
  if steps:
    raise ValueError(f"no checkpoint in {manager.directory} restores: {'; '.join(failures)}. "
                     "Move the checkpoints/ folder away to start over")
  return None, None


def checksums(state: Any) -> dict[str, int]:
  """CRC-32 of the bytes of every array of `state`, by its path: saved beside
  a checkpoint, so that bytes changed on disk afterwards (which orbax may
  restore without an error) are caught on restore. Reads this process's copy
  of each (replicated) array."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      leaf = leaf.addressable_data(0)
    out[jax.tree_util.keystr(path)] = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).data)
  return out


def verify_checksums(state: Any, expected: Mapping[str, int], where: str) -> None:
  """Raises `CorruptCheckpointError` when `state`'s arrays differ from `expected`."""
  actual = checksums(state)
  bad = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
  if bad:
    raise CorruptCheckpointError(
        f"{where}: {len(bad)} of its {len(expected)} arrays differ from what was saved "
        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): its files changed after "
        "they were written")


def latest_state(workdir: str) -> tuple[dict[str, Any], int]:
  """The train state of the latest checkpoint as numpy arrays, and its step."""
  return state_at(workdir, None)


def state_at(workdir: str, step: int | None) -> tuple[dict[str, Any], int]:
  """The train state of checkpoint `step` (None: the latest), as numpy arrays."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir!r} has no checkpoints/ directory: pass the workdir of a "
                            "tljax run that has saved a checkpoint")
  manager = ocp.CheckpointManager(directory)
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {directory}")
  elif step not in manager.all_steps():
    raise FileNotFoundError(f"{directory} has no checkpoint of step {step}; it has "
                            f"{sorted(manager.all_steps())}")
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=local))
  return jax.tree.map(np.asarray, state), step


def is_workdir(path: str) -> bool:
  """A tljax run's workdir (config.json and checkpoints/), or one of its checkpoints."""
  return (os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))
          and os.path.isdir(os.path.join(path, "checkpoints"))) or _checkpoint_step(path) is not None


def _checkpoint_step(path: str) -> tuple[str, int] | None:
  """`(workdir, step)` when `path` is `<workdir>/checkpoints/<step>`."""
  path = os.path.normpath(path)
  parent, name = os.path.split(path)
  if name.isdigit() and os.path.basename(parent) == "checkpoints" and os.path.isdir(path):
    return os.path.dirname(parent), int(name)
  return None


def classifier_variables(path: str) -> tuple[dict[str, Any], str]:
  """The classifier's variables (`params`, `batch_stats`) saved by a tljax run.

  Args:
    path: a workdir (its latest checkpoint) or `<workdir>/checkpoints/<step>`.

  Returns:
    The variables as numpy arrays, and a description (`workdir@step`).
  """
  named = _checkpoint_step(path)
  workdir, step = named if named else (path, None)
  state, step = state_at(workdir, step)
  variables = {"params": state["params"]["classifier"]}
  for collection, tree in state["model_state"].items():
    if isinstance(tree, Mapping) and "classifier" in tree:
      variables[collection] = tree["classifier"]
  return variables, f"{os.path.abspath(workdir)}@{step}"
