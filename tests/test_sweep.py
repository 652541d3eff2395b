"""Sweeps: grid expansion, local launching with skip/resume, SLURM arrays, collection."""

import csv
import json
import os
import shutil
import statistics

import pytest

from conftest import REPO
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
  os.makedirs(runs[1].workdir(out))
  with open(os.path.join(runs[1].workdir(out), "results.json"), "w") as f:
    f.write("{}")
  path = sweep.write_slurm_array(runs, out, str(REPO / "experiments/slurm/array.sbatch"))
  script = open(path).read()
  assert "#SBATCH --array=0-1" in script and "{" not in script.split("set -euo")[0].replace("${", "")
  lines = open(os.path.join(out, "runs.txt")).read().splitlines()
  assert len(lines) == 2 and all("tljax.main" in l for l in lines)
  assert "seed1" not in "".join(lines)


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
