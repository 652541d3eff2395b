"""Sweeps: grid expansion, local launching with skip/resume, SLURM arrays, collection."""

import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest

from conftest import REPO, load_config
from tljax import sweep

_TINY = {"model.backbone_kwargs.widths": (8, 8, 16), "model.bottleneck_dim": 32,
         "batch_size": 16, "eval_batch_size": 128, "total_steps": 4, "eval_every": 4,
         "checkpoint_every": 2, "log_every": 2, "data.num_threads": 0}


def _grid(data_dir):
  return {"methods": {"source_only": "configs/source_only.py:digits",
                      "dann": {"config": "configs/dann.py:digits",
                               "overrides": {"method.hidden_sizes": (16, 16)}}},
          "tasks": {"D→DM": {"data_dir": data_dir}},
          "seeds": [0],
          "overrides": _TINY}


def test_expand_and_commands(tmp_path):
  grid = {"methods": {"dann": "configs/dann.py:office31", "dan": "configs/dan.py:office31"},
          "tasks": {"A→W": {"source": "office31/amazon", "target": "office31/webcam"},
                    "D→A": {"source": "office31/dslr", "target": "office31/amazon"}},
          "seeds": [0, 1, 2], "overrides": {"manual_dir": "/data", "model.dont_load": ("head/.*",)}}
  runs = sweep.expand(grid)
  assert len(runs) == 12 and len({r.workdir("/out") for r in runs}) == 12
  command = runs[0].command("/out", python="python")
  assert command[:4] == ["python", "-m", "tljax.main", "--config=configs/dann.py:office31"]
  assert "--workdir=/out/dann/A2W/seed0" in command and "--config.seed=0" in command
  assert "--config.source=office31/amazon" in command and "--config.manual_dir=/data" in command
  assert "--config.model.dont_load=('head/.*',)" in command


def test_slurm_array_lists_only_unfinished_runs(tmp_path):
  runs = sweep.expand({"methods": {"dann": "configs/dann.py:digits"}, "tasks": {"t": {}},
                       "seeds": [0, 1, 2]})
  out = str(tmp_path / "sweep")
  _write_finished(runs[1].workdir(out))
  path = sweep.write_slurm_array(runs, out, str(REPO / "experiments/slurm/array.sbatch"))
  script = open(path).read()
  assert "#SBATCH --array=0-1" in script and "{" not in script.split("set -euo")[0].replace("${", "")
  lines = open(os.path.join(out, "runs.txt")).read().splitlines()
  assert len(lines) == 2 and all("tljax.main" in l for l in lines)
  assert "seed1" not in "".join(lines)


def _write_finished(workdir, steps=4):
  """The results.json of a run that reached its last step."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"target_accuracy": 0.5, "source_accuracy": 0.9, "step": steps,
               "config": {"total_steps": steps}}, f)


class _Exited:
  """A process that has already exited with `code` (what `sweep._start` returns)."""

  def __init__(self, code):
    self.returncode = code

  def poll(self):
    return self.returncode


def _chained_grid():
  return {"methods": {"source_only": "configs/source_only.py:digits",
                      "shot": {"config": "configs/shot.py:digits", "init_from": "source_only"}},
          "tasks": {"t": {}}, "seeds": [0, 1]}


def test_init_from_points_each_run_at_its_parents_workdir(tmp_path):
  runs = sweep.expand(_chained_grid())
  shot1 = next(r for r in runs if r.method == "shot" and r.seed == 1)
  parent = os.path.abspath(os.path.join(str(tmp_path), "source_only", "t", "seed1"))
  assert shot1.parent().name == "source_only/t/seed1"
  assert f"--config.model.init={parent}" in shot1.command(str(tmp_path))
  assert all("model.init" not in " ".join(r.command("/o")) for r in runs if r.method == "source_only")
  bad = _chained_grid()
  bad["methods"]["shot"]["init_from"] = "erm"
  with pytest.raises(ValueError, match="init_from='erm' is not a row"):
    sweep.expand(bad)
  cyclic = _chained_grid()
  cyclic["methods"]["source_only"] = {"config": "configs/source_only.py:digits",
                                      "init_from": "shot"}
  with pytest.raises(ValueError, match="cycle: source_only -> shot -> source_only"):
    sweep.expand(cyclic)


def test_init_field_hands_the_parents_workdir_to_another_field(tmp_path):
  grid = {"methods": {"erm": "configs/source_only.py:ssl_digits",
                      "round1": {"config": "configs/noisy_student.py:ssl_digits",
                                 "init_from": "erm", "init_field": "method.teacher"}},
          "tasks": {"t": {"model.init": "/pretrained"}}, "seeds": [0]}
  round1 = next(r for r in sweep.expand(grid) if r.method == "round1")
  command = round1.command(str(tmp_path))
  parent = os.path.abspath(os.path.join(str(tmp_path), "erm", "t", "seed0"))
  assert f"--config.method.teacher={parent}" in command
  assert "--config.model.init=/pretrained" in command  # the student's own start is kept
  grid["methods"]["round1"]["overrides"] = {"method.teacher": "/elsewhere"}
  with pytest.raises(ValueError, match="give init_from or a method.teacher override"):
    sweep.expand(grid)


def test_local_launch_starts_a_run_after_its_parent_and_skips_it_when_the_parent_fails(
    tmp_path, monkeypatch):
  out = str(tmp_path / "sweep")
  events = []

  def fake_start(run, out_dir):  # source_only seed 1 fails; every other run finishes
    events.append(("start", run.name))
    code = 1 if run.name == "source_only/t/seed1" else 0
    if code == 0:
      _write_finished(run.workdir(out_dir))
    events.append(("end", run.name))
    return _Exited(code)

  monkeypatch.setattr(sweep, "_start", fake_start)
  runs = sweep.expand(_chained_grid())
  # Children first in the list: the launcher must still wait for their parents.
  outcomes = dict((r.name, code) for r, code in
                  sweep.launch_local(runs[::-1], out, parallel=2, poll_seconds=0))
  assert outcomes == {"source_only/t/seed0": 0, "source_only/t/seed1": 1,
                      "shot/t/seed0": 0, "shot/t/seed1": -1}
  assert events.index(("start", "shot/t/seed0")) > events.index(("end", "source_only/t/seed0"))
  assert ("start", "shot/t/seed1") not in events
  # A parent from an earlier launch counts; one neither finished nor launched does not.
  outcomes = dict((r.name, code) for r, code in
                  sweep.launch_local([r for r in runs if r.method == "shot"], out, poll_seconds=0))
  assert outcomes == {"shot/t/seed1": -1}
  # SLURM: a run whose parent has not finished waits for the next submission.
  shutil.rmtree(os.path.join(out, "shot"))
  sweep.write_slurm_array(runs, out, str(REPO / "experiments/slurm/array.sbatch"))
  lines = open(os.path.join(out, "runs.txt")).read().splitlines()
  assert len(lines) == 2 and "source_only/t/seed1" in lines[0] and "shot/t/seed0" in lines[1]


def test_local_sweep_skips_finished_and_resumes_interrupted(digits_data_dir, tmp_path):
  out = str(tmp_path / "sweep")
  runs = sweep.expand(_grid(digits_data_dir))
  outcomes = sweep.launch_local(runs, out, parallel=2)
  assert sorted(code for _, code in outcomes) == [0, 0]
  assert all(sweep.is_finished(r, out) for r in runs)
  # An interrupted run: its checkpoint of step 2 is there, its results are not.
  interrupted = runs[1].workdir(out)
  os.remove(os.path.join(interrupted, "results.json"))
  shutil.rmtree(os.path.join(interrupted, "checkpoints", "4"))
  outcomes = sweep.launch_local(runs, out)
  assert [r.name for r, _ in outcomes] == [runs[1].name] and outcomes[0][1] == 0
  assert "Resumed from the checkpoint of step 2" in open(os.path.join(interrupted, "log.txt")).read()

  table = sweep.collect(out, _grid(digits_data_dir))
  by_method = {row["method"]: row for row in table["rows"]}
  for run in runs:
    with open(os.path.join(run.workdir(out), "results.json")) as f:
      accuracy = 100 * json.load(f)["target_accuracy"]
    assert by_method[run.method]["mean"] == pytest.approx(accuracy)
  md, csv_path = sweep.write_tables(str(tmp_path / "tables" / "digits"), table, "Digits")
  text = open(md).read()
  assert "| source_only |" in text and "± 0.0" in text
  rows = list(csv.DictReader(open(csv_path)))
  assert {r["method"] for r in rows} == {"source_only", "dann"}


def test_collect_statistics_over_seeds(tmp_path):
  out = str(tmp_path)
  values = {"dann": [0.80, 0.84, 0.82], "source_only": [0.70, 0.74]}
  for method, accuracies in values.items():
    for seed, accuracy in enumerate(accuracies):
      workdir = os.path.join(out, method, "A2W", f"seed{seed}")
      os.makedirs(workdir)
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"target_accuracy": accuracy, "source_accuracy": 0.99, "wall_time_s": 10.0}, f)
  table = sweep.collect(out, reference={("dann", "A2W"): 91.4})
  rows = {r["method"]: r for r in table["rows"]}
  assert rows["dann"]["mean"] == pytest.approx(82.0)
  assert rows["dann"]["std"] == pytest.approx(statistics.stdev([80.0, 84.0, 82.0]))
  assert rows["source_only"]["seeds"] == 2 and table["methods"][0] == "source_only"
  text = sweep.render_markdown(table, "Office-31")
  assert "| dann | 82.0 ± 2.0 | 91.4 |" in text


def _fake_run(out, method, task, seed, accuracy, validators_final):
  workdir = os.path.join(out, method, task, f"seed{seed}")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"target_accuracy": accuracy, "source_accuracy": 0.99, "wall_time_s": 1.0,
               "validators_final": validators_final}, f)


def test_intervals_and_comparisons_with_the_baselines(tmp_path):
  import scipy.stats
  out = str(tmp_path)
  values = {"source_only": [0.50, 0.52, 0.51], "dann": [0.70, 0.72, 0.71],
            "mcc": [0.40, 0.60, 0.55], "bsp": [0.55, 0.58, 0.55]}
  for method, accuracies in values.items():
    for seed, accuracy in enumerate(accuracies):
      _fake_run(out, method, "T", seed, accuracy, {})
  table = sweep.collect(out)
  rows = {r["method"]: r for r in table["rows"]}
  x = [100 * v for v in values["dann"]]
  half = scipy.stats.t.ppf(0.975, 2) * statistics.stdev(x) / 3 ** 0.5
  assert rows["dann"]["ci_low"] == pytest.approx(statistics.fmean(x) - half)
  assert rows["dann"]["vs_source_only"] == "better"
  assert rows["mcc"]["vs_source_only"] == "not distinguishable"
  assert rows["source_only"]["vs_source_only"] == ""
  # Paired by seed: BSP's intervals of the mean overlap ERM's, but every seed
  # gains 4-6 points over ERM's run of that seed.
  assert rows["bsp"]["vs_source_only"] == "not distinguishable"
  half = scipy.stats.t.ppf(0.975, 2) * statistics.stdev([5.0, 6.0, 4.0]) / 3 ** 0.5
  assert rows["bsp"]["paired_vs_source_only"] == "better"
  assert rows["bsp"]["delta_vs_source_only"] == pytest.approx(5.0)
  assert rows["bsp"]["delta_low_vs_source_only"] == pytest.approx(5.0 - half)
  assert rows["bsp"]["delta_high_vs_source_only"] == pytest.approx(5.0 + half)
  assert rows["mcc"]["paired_vs_source_only"] == "not distinguishable"  # -10, +8, +4
  assert rows["source_only"]["paired_vs_source_only"] == ""
  assert rows["dann"]["paired_vs_adabn"] == ""  # no adabn rows
  text = sweep.render_markdown(table, "T")
  assert "| dann | 71.0 | [" in text and "| better |" in text
  assert "| not distinguishable | +5.0 [+2.5, +7.5] better |" in text


def test_a_grid_names_its_own_baselines(tmp_path):
  """`baselines` in a grid: rows compared with every row, or one baseline per row."""
  out = str(tmp_path)
  values = {"erm+base": [0.50, 0.52, 0.51], "erm+big": [0.70, 0.72, 0.71],
            "erm+small": [0.40, 0.60, 0.55], "source_only": [0.9, 0.9, 0.9]}
  for method, accuracies in values.items():
    for seed, accuracy in enumerate(accuracies):
      _fake_run(out, method, "T", seed, accuracy, {})
  grid = {"methods": dict.fromkeys(values, "configs/source_only.py:digits"), "tasks": {"T": {}},
          "seeds": [0, 1, 2]}
  per_row = sweep.collect(out, {**grid, "baselines": {"erm+big": "erm+base",
                                                      "erm+small": "erm+base"}})
  rows = {r["method"]: r for r in per_row["rows"]}
  assert (rows["erm+big"]["baseline"], rows["erm+big"]["vs_baseline"]) == ("erm+base", "better")
  assert rows["erm+small"]["vs_baseline"] == "not distinguishable"
  assert rows["erm+base"]["vs_baseline"] == "" and "vs_source_only" not in rows["erm+big"]
  text = sweep.render_markdown(per_row, "T")
  assert "| seeds | baseline | vs baseline |" in text and "| erm+base | better |" in text
  md, csv_path = sweep.write_tables(str(tmp_path / "table"), per_row, "T")
  with open(csv_path) as f:
    assert f.readline().strip().endswith(
        "reference,baseline,vs_baseline,paired_vs_baseline,delta_vs_baseline,"
        "delta_low_vs_baseline,delta_high_vs_baseline")
  listed = sweep.collect(out, {**grid, "baselines": ["erm+base"]})
  rows = {r["method"]: r for r in listed["rows"]}
  assert rows["source_only"]["vs_erm+base"] == "better" and "vs_source_only" not in rows["erm+big"]
  assert "| vs erm+base |" in sweep.render_markdown(listed, "T")

  grid_file = tmp_path / "grid.py"
  grid_file.write_text("def get_grid():\n  return {'methods': {'a': 'x.py'}, 'tasks': {'T': {}}, "
                       "'seeds': [0], 'baselines': {'a': 'b'}}\n")
  with pytest.raises(ValueError, match=r"'baselines' names \['b'\], not rows of the grid"):
    sweep.load_grid(str(grid_file))


def test_a_grid_file_takes_an_argument(tmp_path):
  grid_file = tmp_path / "grid.py"
  grid_file.write_text("def get_grid(arg='embedded'):\n  return {'methods': {'a': arg + '.py'}, "
                       "'tasks': {'T': {}}, 'seeds': [0]}\n")
  assert sweep.load_grid(str(grid_file))["methods"] == {"a": "embedded.py"}
  assert sweep.load_grid(f"{grid_file}:office31")["methods"] == {"a": "office31.py"}
  with pytest.raises(FileNotFoundError, match="nope.py"):
    sweep.load_grid(f"{tmp_path / 'nope.py'}:office31")


def test_select_picks_the_configuration_a_validator_prefers(tmp_path):
  """SND (higher is better) and DEV (lower is better) choose among settings of
  a method and among all rows; the oracle picks the best accuracy."""
  out = str(tmp_path)
  runs = {  # row: (accuracies over seeds, snd, dev)
      "dann@0.1": ([0.60, 0.62], 5.0, 0.9),
      "dann@1": ([0.70, 0.74], 4.0, 0.5),
      "mcc@1": ([0.80, 0.82], 6.0, 0.7),
  }
  for method, (accuracies, snd, dev) in runs.items():
    for seed, accuracy in enumerate(accuracies):
      _fake_run(out, method, "T", seed, accuracy, {"snd": snd + seed * 0.01, "dev": dev})
  table = sweep.collect(out)
  snd = {s["group"]: s for s in sweep.select_configs(table, "snd", within_family=True)}
  assert snd["dann"]["pick"] == "dann@0.1" and snd["dann"]["oracle_pick"] == "dann@1"
  assert snd["dann"]["pick_accuracy"] == pytest.approx(61.0)
  (overall,) = sweep.select_configs(table, "dev")
  assert overall["pick"] == "dann@1" and overall["oracle_pick"] == "mcc@1"
  assert overall["mean_accuracy"] == pytest.approx((61 + 72 + 81) / 3)
  (oracle,) = sweep.select_configs(table, "oracle")
  assert oracle["pick"] == "mcc@1"
  with pytest.raises(ValueError, match="choose one of"):
    sweep.select_configs(table, "accuracy")


# ----------------------------------------------------------------------------
# Faults: results that cannot be read, and a launch stopped by Ctrl-C.
# ----------------------------------------------------------------------------


def test_a_run_is_finished_only_when_its_results_parse_and_reach_its_last_step(tmp_path):
  """Issue 33, case 7: an empty, cut-short or early results.json is no finished run."""
  (run,) = sweep.expand({"methods": {"dann": "configs/dann.py:digits"}, "tasks": {"t": {}},
                         "seeds": [0], "overrides": {"total_steps": 4}})
  out = str(tmp_path)
  path = os.path.join(run.workdir(out), "results.json")
  _write_finished(run.workdir(out), steps=4)
  assert sweep.is_finished(run, out)
  good = open(path).read()
  for text in ("", good[:len(good) // 2], "[]", json.dumps({**json.loads(good), "step": 2}),
               json.dumps({**json.loads(good), "target_accuracy": None})):
    with open(path, "w") as f:
      f.write(text)
    assert not sweep.is_finished(run, out), text
  # A grid that asks for more steps than the run made reruns it (it resumes).
  _write_finished(run.workdir(out), steps=4)
  (longer,) = sweep.expand({"methods": {"dann": "configs/dann.py:digits"}, "tasks": {"t": {}},
                            "seeds": [0], "overrides": {"total_steps": 8}})
  assert not sweep.is_finished(longer, out)


def test_collect_skips_and_names_results_that_cannot_be_read(tmp_path):
  """Issue 33, case 7: truncated, wrong-typed or empty results.json files are
  skipped and named, through the library and the command line."""
  out = str(tmp_path / "sweep")
  _fake_run(out, "dann", "T", 0, 0.8, {})
  bad = {1: '{"target_accuracy": 0.7, "sour', 2: '{"target_accuracy": "high", '
         '"source_accuracy": 0.9}', 3: ""}
  for seed, text in bad.items():
    os.makedirs(os.path.join(out, "dann", "T", f"seed{seed}"))
    with open(os.path.join(out, "dann", "T", f"seed{seed}", "results.json"), "w") as f:
      f.write(text)
  table = sweep.collect(out)
  (row,) = table["rows"]
  assert row["seeds"] == 1 and row["mean"] == pytest.approx(80.0)
  assert [s.split(os.sep)[-2] for s in table["skipped"]] == ["seed1", "seed2", "seed3"]
  assert "does not parse" in table["skipped"][0] and "'high', not a number" in table["skipped"][1]
  result = subprocess.run([sys.executable, "-m", "tljax.sweep", "collect", f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert re.search(r"skipped 3 results\.json file\(s\) that cannot be read: .*seed1/results\.json "
                   r"\(does not parse", result.stdout), result.stdout[-2000:]


class _Running:
  """A run that goes on until it gets a signal, then exits with 128 + its number."""

  def __init__(self, started):
    self.signals, self.returncode = [], None
    started.append(self)

  def poll(self):
    if len(_Running.polls) == 3:  # a while after the runs started: SIGTERM to the launcher
      os.kill(os.getpid(), signal.SIGTERM)
    _Running.polls.append(1)
    return self.returncode

  def send_signal(self, signum):
    self.signals.append(signum)
    self.returncode = 128 + signum


def test_sigterm_to_the_launcher_reaches_each_run_once_and_starts_no_more(tmp_path, monkeypatch):
  """Issue 32, item 3: SIGTERM (as Ctrl-C) to `launch` is passed to the running
  runs once each, no queued run starts, and the launch ends by naming them."""
  started = []
  _Running.polls = []
  monkeypatch.setattr(sweep, "_start", lambda run, out: _Running(started))
  runs = sweep.expand({"methods": {"dann": "configs/dann.py:digits"}, "tasks": {"t": {}},
                       "seeds": [0, 1, 2, 3, 4]})
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(sweep.LaunchInterrupted) as interrupted:
    sweep.launch_local(runs, str(tmp_path), parallel=2, poll_seconds=0)
  assert len(started) == 2  # never more than --parallel, and none after the signal
  assert [p.signals for p in started] == [[signal.SIGTERM], [signal.SIGTERM]]
  assert interrupted.value.signum == signal.SIGTERM
  assert interrupted.value.interrupted == ["dann/t/seed0", "dann/t/seed1"]
  assert re.search(r"SIGTERM: stopped 2 run\(s\) .*started none of the 3 waiting; relaunch",
                   str(interrupted.value))
  assert signal.getsignal(signal.SIGTERM) is handler  # the launcher's own handler is gone


def test_ctrl_c_stops_a_local_launch_and_starts_nothing_more(digits_data_dir, tmp_path):
  """Issues 32 (item 3) and 33 (case 7): Ctrl-C to the launcher's process group
  stops its run, which saves a checkpoint, starts none of the queued runs, and
  ends in one line naming what a relaunch resumes; no traceback."""
  out = tmp_path / "sweep"
  grid = tmp_path / "grid.py"
  overrides = {**_TINY, "total_steps": 100000, "eval_every": 100000,
               "checkpoint_every": 100000, "data_dir": digits_data_dir}
  grid.write_text("def get_grid():\n  return " + repr(
      {"methods": {"source_only": "configs/source_only.py:digits"}, "tasks": {"t": {}},
       "seeds": [0, 1, 2], "overrides": overrides}) + "\n")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  launcher = subprocess.Popen(
      [sys.executable, "-m", "tljax.sweep", "launch", f"--grid={grid}", f"--out={out}",
       "--parallel=1"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, start_new_session=True)
  log = out / "source_only" / "t" / "seed0" / "log.txt"
  deadline = time.time() + 600
  while not (log.exists() and "First step" in log.read_text()):
    assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
    time.sleep(0.5)
  os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C at the terminal does
  stdout, stderr = launcher.communicate(timeout=600)
  assert launcher.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stdout + stderr + log.read_text(), (stdout + stderr)[-3000:]
  errors = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and re.search(
      r"SIGINT: stopped 1 run\(s\) \(source_only/t/seed0;.*started none of the 2 waiting; "
      r"relaunch the same command to resume them", errors[0]), stderr[-3000:]
  assert sorted(os.listdir(out / "source_only" / "t")) == ["seed0"]
  saved = re.search(r"SIGINT: saved the checkpoint of step (\d+)", log.read_text())
  assert saved and os.listdir(out / "source_only" / "t" / "seed0" / "checkpoints") == [
      saved.group(1)]


def test_the_average_over_columns_has_its_own_interval_and_pairing(tmp_path):
  import scipy.stats
  out = str(tmp_path)
  # ERM and IRM on two held-out domains, three seeds; IRM's average gains 1, 3 and 2
  # points on seeds 0-2 ((+2, +4, +3) on A, (0, +2, +1) on B).
  values = {("erm", "A"): [0.60, 0.62, 0.64], ("erm", "B"): [0.40, 0.40, 0.44],
            ("irm", "A"): [0.62, 0.66, 0.67], ("irm", "B"): [0.40, 0.42, 0.45]}
  for (method, task), accuracies in values.items():
    for seed, accuracy in enumerate(accuracies):
      _fake_run(out, method, task, seed, accuracy, {})
  grid = {"methods": {"erm": "c", "irm": "c"}, "tasks": {"A": {}, "B": {}}, "seeds": [0, 1, 2],
          "baselines": ["erm"]}
  table = sweep.collect(out, grid)
  average = {r["method"]: r for r in table["rows"] if r["task"] == "Avg"}
  assert table["tasks"] == ["A", "B"]
  assert average["erm"]["by_seed"] == pytest.approx({0: 50.0, 1: 51.0, 2: 54.0})
  assert average["irm"]["mean"] == pytest.approx(statistics.fmean([51.0, 54.0, 56.0]))
  half = scipy.stats.t.ppf(0.975, 2) * statistics.stdev([1.0, 3.0, 2.0]) / 3 ** 0.5
  assert average["irm"]["delta_vs_erm"] == pytest.approx(2.0)
  assert average["irm"]["delta_low_vs_erm"] == pytest.approx(2.0 - half)
  text = sweep.render_markdown(table, "DG")
  assert "| irm | 65.0 ± 2.6 | 42.3 ± 2.5 | 53.7 ± 2.5 |" in text
  assert "### Avg: 95% intervals and comparisons" in text


@pytest.mark.parametrize("grid, message", [
    ('def get_grid(arg="embedded"):\n  return {"methods": {"dann": "configs/dann.py:digits"}, '
     '"tasks": {"T": {}}, "seeds": [0], "baselines": ["source_only"]}\n',
     r"^error: .*grid\.py: 'baselines' names \['source_only'\], not rows of the grid "
     r"\(rows: \['dann'\]\)"),
    (None, r"^error: .*no_such_grid\.py"),
])
def test_a_grid_that_does_not_do_is_one_line(grid, message, tmp_path):
  path = tmp_path / ("grid.py" if grid else "no_such_grid.py")
  if grid:
    path.write_text(grid)
  result = subprocess.run([sys.executable, "-m", "tljax.sweep", "list", f"--grid={path}",
                           f"--out={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and re.search(message, lines[0]), result.stderr[-3000:]
  assert not os.path.exists(tmp_path / "out")


# Every grid the project ships, with the arguments its docstring names.
SHIPPED_GRIDS = sorted(
    [str(p.relative_to(REPO)) for p in (REPO / "experiments" / "grids").glob("*.py")]
    + ["experiments/grids/partial.py:office31", "experiments/grids/open_set.py:office31",
       "experiments/grids/universal.py:office31", "experiments/grids/regression.py:dsprites"])


@pytest.mark.parametrize("grid_path", SHIPPED_GRIDS)
def test_every_shipped_grid_expands_to_configs_that_load(grid_path, monkeypatch):
  """A grid's runs name configs that exist and overrides their configs have:
  what `launch` would otherwise find out one run at a time, after hours."""
  from tljax import config_checks  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(REPO)
  runs = sweep.expand(sweep.load_grid(grid_path))
  assert runs
  for spec, overrides, init_from in sorted({(r.spec, r.overrides, r.init_from or "")
                                            for r in runs}):
    config = load_config(spec, overrides)
    # Runs on the project's embedded data are checked as start-up checks them;
    # those that read a user's files (data, weights) or another run's workdir
    # (`init_from`) cannot be here.
    reads_files = ({"manual_dir", "model.init"} & {k for k, _ in overrides}
                   or config.model.init or init_from)
    if not reads_files:
      config_checks.validate(config)
