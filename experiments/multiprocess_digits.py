"""One process vs several processes on the embedded task: agreement and overhead.

    python experiments/multiprocess_digits.py --steps=300 --out=experiments/results

Runs the same config (DANN on Digits -> Digits-M by default) three ways on this
machine, each for `--steps` steps from the same seed:

  * 1 process, 1 CPU device;
  * 1 process, 2 CPU devices (the global batch split over a 2-device mesh);
  * 2 processes on loopback (`jax.distributed`, gloo collectives), 1 device each,
    each process reading only its half of every global batch.

and writes `multiprocess.md` / `.json`: the largest absolute difference of any
parameter from the 1-process 2-device run, and each run's train steps/s and wall
time (the ratio to the 1-process runs is the cost of crossing processes).
"""

import json
import os
import socket
import subprocess
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tljax.workdir import latest_state  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/dann.py:digits", "Config to run.")
_STEPS = flags.DEFINE_integer("steps", 300, "Train steps of each run.")
_OUT = flags.DEFINE_string("out", "experiments/results", "Where the table goes.")
_SCRATCH = flags.DEFINE_string("scratch", "/tmp/tljax/multiprocess", "Workdirs of the runs.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the config's).")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(name: str, num_processes: int, devices_per_process: int) -> dict:
  workdir = os.path.join(_SCRATCH.value, name)
  if os.path.exists(workdir):
    raise SystemExit(f"error: {workdir} exists; remove it or pass another --scratch")
  args = [sys.executable, "-m", "tljax.main", f"--config={_CONFIG.value}", f"--workdir={workdir}",
          f"--config.total_steps={_STEPS.value}", f"--config.checkpoint_every={_STEPS.value}",
          f"--config.eval_every={_STEPS.value}", "--config.log_every=50"]
  if _DATA_DIR.value:
    args.append(f"--config.data_dir={_DATA_DIR.value}")
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  start = time.perf_counter()
  if num_processes == 1:
    commands = [args]
  else:
    port = _free_port()
    commands = [args + [f"--coordinator_address=localhost:{port}",
                        f"--num_processes={num_processes}", f"--process_id={i}"]
                for i in range(num_processes)]
  processes = [subprocess.Popen(c, cwd=_REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT) for c in commands]
  outputs = [p.communicate()[0].decode() for p in processes]
  wall = time.perf_counter() - start
  for p, out in zip(processes, outputs):
    if p.returncode:
      raise SystemExit(f"error: run {name} failed:\n{out[-3000:]}")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  state, step = latest_state(workdir)
  assert step == _STEPS.value, step
  flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  params = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v) for p, v in flat}
  print(f"{name}: {results['train_steps_per_second']:.2f} steps/s, wall {wall:.1f} s, "
        f"target accuracy {results['target_accuracy']:.4f}", flush=True)
  return {"name": name, "processes": num_processes, "devices_per_process": devices_per_process,
          "steps_per_second": results["train_steps_per_second"], "wall_time_s": wall,
          "target_accuracy": results["target_accuracy"], "params": params}


def _max_difference(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def main(argv):
  del argv
  runs = [_run("1proc_1dev", 1, 1), _run("1proc_2dev", 1, 2), _run("2proc_1dev", 2, 1)]
  reference = runs[1]
  rows = []
  for r in runs:
    rows.append({k: v for k, v in r.items() if k != "params"}
                | {"max_abs_param_diff": _max_difference(r["params"], reference["params"]),
                   "time_ratio": reference["steps_per_second"] / r["steps_per_second"]})
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "multiprocess.json"), "w") as f:
    json.dump({"config": _CONFIG.value, "steps": _STEPS.value, "runs": rows}, f, indent=1)
  lines = [
      f"## One process vs two processes ({_CONFIG.value}, {_STEPS.value} steps, CPU, 2 cores)",
      "",
      "`python experiments/multiprocess_digits.py`: max |Δ| of any parameter against the",
      "1-process 2-device run after the last step, and train steps/s (time ratio > 1: slower",
      "than the 1-process 2-device run).",
      "",
      "| run | processes × devices | steps/s | time ratio | wall (s) | max abs param diff | target acc |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['processes']} × {r['devices_per_process']} | "
                 f"{r['steps_per_second']:.2f} | {r['time_ratio']:.2f} | {r['wall_time_s']:.0f} | "
                 f"{r['max_abs_param_diff']:.1e} | {100 * r['target_accuracy']:.2f} |")
  with open(os.path.join(_OUT.value, "multiprocess.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
