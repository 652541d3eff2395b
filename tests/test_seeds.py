"""Several seeds in one process (`config.num_seeds`, `tljax.seeds`): each seed
is its single run, file for file; resumable; the sweep launches seeds together."""

import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import flat, tiny_config, train_lines
from tljax import seeds, sweep, train
from tljax.workdir import state_at

SEEDS = (3, 4)
# Every seed's checkpoints every 2 steps, evaluations at 3 and 6.
FIELDS = {"checkpoint_every": 2}


def _config(data_dir, **fields):
  """The tiny digits config with DANN (a discriminator beside the classifier)."""
  config = tiny_config(data_dir, **FIELDS, **fields)
  config.method = importlib.import_module("configs.dann").get_config().method
  return config


@pytest.fixture(scope="module")
def runs(digits_data_dir, tmp_path_factory):
  """The single runs of seeds 3 and 4, and the two seeds trained together."""
  root = tmp_path_factory.mktemp("seeds")
  singles = {}
  for seed in SEEDS:
    config = _config(digits_data_dir, seed=seed)
    singles[seed] = str(root / "single" / f"seed{seed}")
    train.train_and_evaluate(config, singles[seed])
  together = str(root / "together")
  config = _config(digits_data_dir, seed=SEEDS[0], num_seeds=len(SEEDS))
  returned = seeds.train_and_evaluate(config, together)
  return {"root": root, "singles": singles, "together": together, "returned": returned}


def _json(path):
  with open(path) as f:
    return json.load(f)


def _same_state(a_workdir, b_workdir, step=None):
  a, a_step = state_at(a_workdir, step)
  b, b_step = state_at(b_workdir, step)
  assert a_step == b_step
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_each_seed_is_its_single_run_file_for_file(runs):
  """On CPU the seeds' steps are one program holding each seed's own step
  (`seed_batching='unroll'`): the same operations as the single run, so the
  same bits, not merely close ones."""
  for seed in SEEDS:
    single, together = runs["singles"][seed], os.path.join(runs["together"], f"seed{seed}")
    assert sorted(os.listdir(together)) == sorted(os.listdir(single))
    assert _json(os.path.join(together, "config.json")) == _json(
        os.path.join(single, "config.json"))
    _same_state(single, together)
    assert sorted(os.listdir(os.path.join(together, "checkpoints"))) == sorted(
        os.listdir(os.path.join(single, "checkpoints")))
    assert train_lines(together) == train_lines(single)
    mine, theirs = (_json(os.path.join(d, "results.json")) for d in (together, single))
    for key in ("primary_metric", "target_report", "source_report", "oracle_best", "selected",
                "validators_final", "selected_checkpoints", "step"):
      assert mine[key] == theirs[key], key
    assert runs["returned"]["seeds"][seed]["primary_metric"] == theirs["primary_metric"]
  # The two seeds differ (their own initialisation and data order).
  a, _ = state_at(runs["singles"][SEEDS[0]], None)
  b, _ = state_at(runs["singles"][SEEDS[1]], None)
  assert not np.array_equal(flat(a)["['params']['classifier']['head']['kernel']"],
                            flat(b)["['params']['classifier']['head']['kernel']"])
  summary = _json(os.path.join(runs["together"], "seeds.json"))
  values = [_json(os.path.join(runs["singles"][s], "results.json"))["primary_metric"]["value"]
            for s in SEEDS]
  assert summary["primary_metric"]["values"] == values
  assert summary["primary_metric"]["mean"] == pytest.approx(np.mean(values))
  assert summary["primary_metric"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_collected_as_separate_runs(runs, tmp_path):
  """`tljax.sweep collect` reads the seeds' workdirs as it reads single runs'."""
  out = tmp_path / "sweep"
  for name, source in (("single", runs["singles"]),
                       ("together", {s: os.path.join(runs["together"], f"seed{s}")
                                     for s in SEEDS})):
    for seed, workdir in source.items():
      shutil.copytree(workdir, out / name / "digits" / f"seed{seed}",
                      ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
  rows = {row["method"]: row for row in sweep.collect(str(out))["rows"]}
  assert rows["together"]["by_seed"] == rows["single"]["by_seed"]
  assert set(rows["together"]["by_seed"]) == set(SEEDS)


def test_resumes_every_seed_even_when_their_latest_steps_differ(runs, digits_data_dir, tmp_path):
  """Stopped at step 4, seed 4's checkpoints after step 2 lost (a stop
  between the seeds' saves): the rerun resumes both seeds from step 2, moves
  seed 3's later checkpoints aside, and ends where the single runs end."""
  workdir = str(tmp_path / "together")
  config = _config(digits_data_dir, seed=SEEDS[0], num_seeds=len(SEEDS))
  config.total_steps = 4
  seeds.train_and_evaluate(config, workdir)
  checkpoints = os.path.join(workdir, f"seed{SEEDS[1]}", "checkpoints")
  for name in os.listdir(checkpoints):
    if name.isdigit() and int(name) > 2:
      shutil.rmtree(os.path.join(checkpoints, name))
  config.total_steps = 6
  seeds.train_and_evaluate(config, workdir, allow_changes=("total_steps",))
  aside = os.listdir(os.path.join(workdir, f"seed{SEEDS[0]}", "superseded_checkpoints"))
  assert "4" in {name.split(".")[0] for name in aside} <= {"3", "4"}
  for seed in SEEDS:
    _same_state(runs["singles"][seed], os.path.join(workdir, f"seed{seed}"))
    resumed = _json(os.path.join(workdir, f"seed{seed}", "results.json"))
    single = _json(os.path.join(runs["singles"][seed], "results.json"))
    assert resumed["selected"] == single["selected"]
    assert resumed["primary_metric"] == single["primary_metric"]


def test_vmapped_seeds_step_as_separate_steps(digits_data_dir):
  """`seed_batching='vmap'` (the accelerators' way): the same steps, to
  rounding. Batching a convolution over seeds turns it into a grouped
  convolution whose sums are ordered differently, and a rounding difference can
  flip a ReLU or a max-pool's choice, which moves a few entries of a small
  layer's update by much more than an ulp (seen on one CPU: 1e-3 of the first
  BN bias, whose update is the whole of its value). So the steps are compared
  by the update of the whole parameter tree: the seeds' updates differ from
  each other by the order of the update itself, and vmap's from the separate
  step's by less than 1e-2 of it (2e-4 seen)."""
  config = _config(digits_data_dir, seed=0)
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  domains = train.open_data(config, "")
  setup = train.build(config, domains.num_classes, mesh, domains.input_shape,
                      num_target_examples=len(domains.target_train), labels=domains.labels)
  states = [setup.state, setup.fresh_state(1)]
  initial = [flat(state.params) for state in states]
  streams = []
  for seed in (0, 1):
    one = _config(digits_data_dir, seed=seed)
    streams.append(train.host_train_batches(one, domains, setup.method, 0))
  batches = [[next(stream) for _ in range(3)] for stream in streams]
  single = train.PhasedStep(setup.method, setup.ctx)
  expected = []
  for state, seed_batches in zip(states, batches):
    for step, batch in enumerate(seed_batches):
      state, _ = single(state, jax.tree.map(jnp.asarray, batch), step)
    expected.append(flat(state.params))
  together = train.PhasedStep(setup.method, setup.ctx, seeds=2, seed_batching="vmap")
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  for step in range(3):
    batch = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                         *(b[step] for b in batches))
    state, metrics = together(state, batch, step)
  assert metrics["loss"].shape == (2,)
  got = flat(state.params)

  def update(params, k):  # seed k's parameters less its start, as one vector
    return np.concatenate([np.ravel(np.asarray(params[key], np.float64) - initial[k][key])
                           for key in sorted(initial[k])])

  for k in range(2):
    reference = update(expected[k], k)
    vmapped = update({key: value[k] for key, value in got.items()}, k)
    size = np.linalg.norm(reference)
    assert size > 0
    assert np.linalg.norm(vmapped - reference) < 1e-2 * size
    # A step that mixed the seeds up would be off by about the other seed's
    # update, which differs from this one's by the order of the update itself.
    assert np.linalg.norm(update(expected[1 - k], 1 - k) - reference) > 0.3 * size
    for key, value in expected[k].items():  # no single entry far off either
      scale = float(np.max(np.abs(value))) + 1e-6
      np.testing.assert_allclose(got[key][k], value, rtol=0, atol=1e-2 * scale, err_msg=key)
  # The seeds' states stay apart: the second seed is not the first.
  key = "['classifier']['head']['kernel']"
  assert not np.allclose(got[key][0], got[key][1])


def test_seed_batching_choice():
  assert train.seed_batching("auto", "cpu") == "unroll"
  assert train.seed_batching("auto", "gpu") == "vmap"
  assert train.seed_batching("vmap", "cpu") == "vmap"
  with pytest.raises(ValueError, match="seed_batching='loop'"):
    train.seed_batching("loop", "cpu")


def test_one_seed_config_per_seed_with_tied_fields(digits_data_dir):
  """Each seed's config is what `--config.seed=<k>` gives: fields tied to the
  seed (the semi-supervised labelled draw) follow it, the caller's config is
  left as it was."""
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO))
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config("ssl_digits")
  config.seed, config.num_seeds = 2, 3
  configs = seeds.seed_configs(config)
  assert [(c.seed, c.num_seeds, c.data.source_subset_seed) for c in configs] == [
      (2, 1, 2), (3, 1, 3), (4, 1, 4)]
  assert (config.seed, config.num_seeds, config.data.source_subset_seed) == (2, 3, 2)


def test_train_and_evaluate_refuses_several_seeds(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir, num_seeds=2)
  with pytest.raises(ValueError, match="tljax.seeds.train_and_evaluate"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_sweep_launches_consecutive_unfinished_seeds_together(tmp_path):
  grid = {"methods": {"source_only": "configs/source_only.py:digits",
                      "shot": {"config": "configs/shot.py:digits", "init_from": "source_only"}},
          "tasks": {"digits": {}}, "seeds": [0, 1, 2, 3]}
  runs = sweep.expand(grid)
  out = str(tmp_path)
  # Seed 1 of source_only has finished: seeds 0 and 2-3 are left, in two runs.
  finished = sweep.Run("source_only", "digits", 1, "", ())
  os.makedirs(finished.workdir(out))
  with open(os.path.join(finished.workdir(out), "results.json"), "w") as f:
    json.dump({"primary_metric": {"value": 0.5}, "target_accuracy": 0.5,
               "source_accuracy": 0.9, "step": 10, "config": {"total_steps": 10}}, f)
  todo = sweep.batch_seeds([r for r in runs if not sweep.is_finished(r, out)])
  names = [r.name for r in todo]
  assert names == ["source_only/digits/seed0", "source_only/digits/seed2-3",
                   "shot/digits/seed0", "shot/digits/seed1", "shot/digits/seed2",
                   "shot/digits/seed3"]
  batched = todo[1]
  assert batched.workdir(out) == os.path.join(out, "source_only", "digits")
  command = batched.command(out)
  assert "--config.seed=2" in command and "--config.num_seeds=2" in command
  assert [r.workdir(out) for r in batched.seed_runs()] == [
      os.path.join(out, "source_only", "digits", f"seed{s}") for s in (2, 3)]
  assert not sweep.is_finished(batched, out)
  # The SHOT runs start from source_only's seed workdirs, one per seed.
  assert f"--config.model.init={os.path.abspath(batched.seed_runs()[0].workdir(out))}" in (
      todo[4].command(out))
