"""Reading a run's workdir: its config and its latest checkpoint, on any machine.

Used by what comes after training (feature extraction, analysis, tests); the
checkpoint is restored onto this process's first device whatever topology wrote
it (one GPU, eight, or several hosts).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: pass the workdir of a tljax run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def latest_state(workdir: str) -> tuple[dict[str, Any], int]:
  """The train state of the latest checkpoint as numpy arrays, and its step."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir!r} has no checkpoints/ directory: pass the workdir of a "
                            "tljax run that has saved a checkpoint")
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no finished checkpoint in {directory}")
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=local))
  return jax.tree.map(np.asarray, state), step
