"""Parameter groups as data: coverage errors, frozen subtrees that leave the
backward pass, per-group optimizer settings, weight-decay masks, schedules."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import REPO
from tljax import optim, train
from tljax.methods import base


def _build(config, devices=1):
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:devices])
  return train.build(config, 10, mesh), NamedSharding(mesh, P("data"))


def _batches(config, sharding, steps, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, 28, 28, 3)
  for _ in range(steps):
    source = {"image": rng.standard_normal(shape, dtype=np.float32),
              "label": rng.integers(0, 10, config.batch_size).astype(np.int32)}
    target = {"image": rng.standard_normal(shape, dtype=np.float32) + 1.0}
    yield jax.device_put({"source": source, "target": target}, sharding)


def _run(config, steps):
  setup, sharding = _build(config)
  initial = jax.device_get(setup.state)
  state, metrics = setup.state, None
  for batch in _batches(config, sharding, steps):
    state, metrics = setup.train_step(state, batch)
  return initial, jax.device_get(state), setup, jax.device_get(metrics)


def _flat(tree):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_uncovered_parameters_are_named(make_config):
  config = make_config(param_groups=(("classifier/backbone/.*", 1.0),))
  with pytest.raises(ValueError, match=r"covers no group for: .*classifier/head/kernel.*catch-all"):
    _build(config)


@pytest.mark.parametrize("groups, message", [
    ((("(", 1.0),), "bad regex"),
    (((".*", "fast"),), "must be 'frozen', a learning-rate multiplier, or a dict"),
    (((".*", -1.0),), "must be >= 0"),
    (((".*", {"lr": 1.0}),), r"unknown group settings \['lr'\]"),
    (((".*", {"momentum": -0.5}),), "momentum=-0.5 must be a number >= 0"),
    ((".*",), "must be a \\(regex, group\\) pair"),
])
def test_malformed_groups(make_config, groups, message):
  with pytest.raises(ValueError, match=message):
    _build(make_config(param_groups=groups))


def test_frozen_subtree_is_bit_identical_and_has_no_state(make_config):
  config = make_config(param_groups=(("classifier/backbone/.*", "frozen"), (".*", 1.0)))
  initial, final, setup, _ = _run(config, steps=3)
  before, after = _flat(initial.params), _flat(final.params)
  moved = {k for k in before if not np.array_equal(before[k], after[k])}
  assert moved and all(not k.startswith("classifier/backbone/") for k in moved)
  assert any(k.startswith("classifier/head/") for k in moved)
  assert any(k.startswith("classifier/bottleneck/") for k in moved)
  for k in before:
    if k.startswith("classifier/backbone/"):
      assert before[k].tobytes() == after[k].tobytes(), k
  # Frozen BatchNorm layers keep their running statistics; the bottleneck's move.
  stats_before, stats_after = _flat(initial.model_state), _flat(final.model_state)
  for k in stats_before:
    same = np.array_equal(stats_before[k], stats_after[k])
    assert same == k.startswith("batch_stats/classifier/backbone/"), k
  assert setup.frozen_norm and "backbone/bn1" in setup.frozen_norm
  # No optimizer state for frozen leaves: momentum buffers cover the trainable ones only.
  trainable = sum(v.size for k, v in before.items() if not k.startswith("classifier/backbone/"))
  assert sum(np.size(x) for x in jax.tree.leaves(final.opt_state) if np.ndim(x) > 0) == trainable


def _step_flops(config):
  setup, sharding = _build(config)
  batch = next(_batches(config, sharding, 1))
  return setup.train_step.lower(setup.state, batch).compile().cost_analysis()["flops"]


def test_frozen_parameters_leave_the_backward_pass(make_config):
  """Freezing the backbone removes its gradient computation from the compiled
  step (not only its update), and the gradient norm covers the trainable rest."""
  big = {"model.backbone_kwargs.widths": (16, 32, 64), "model.backbone_kwargs.conv_impl": "xla"}
  full = _step_flops(make_config(**big))
  frozen = _step_flops(make_config(param_groups=(("classifier/backbone/.*", "frozen"),
                                                 (".*", 1.0)), **big))
  # The backbone's forward stays; its backward (about twice the forward) goes.
  assert frozen < 0.6 * full, (frozen, full)

  config = make_config(param_groups=(("classifier/backbone/.*", "frozen"), (".*", 1.0)))
  setup, sharding = _build(config)
  batch = next(_batches(config, sharding, 1))
  state = setup.state
  _, metrics = setup.train_step(jax.tree.map(lambda x: x.copy(), state), batch)
  mask = setup.ctx.trainable["main"]
  assert not any(v for p, v in mask.items() if p[:2] == ("classifier", "backbone"))
  rng = jax.random.fold_in(state.rng, state.step)

  def loss(trainable):
    params = base.merge(state.params, trainable)
    variables = {**state.variables, "params": params}
    return setup.method.loss(setup.ctx, variables, batch, state.step, rng)[0]

  grads = jax.grad(loss)(base.select(state.params, mask))
  np.testing.assert_allclose(metrics["grad_norm"], optax_global_norm(grads), rtol=1e-5)


def optax_global_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(tree))))


def test_learning_rate_multiplier_scales_the_update(make_config):
  plain = dict(**{"optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
                  "schedule.name": "constant", "model.bottleneck_dropout": 0.0})
  full = make_config(param_groups=((".*", 1.0),), **plain)
  tenth = make_config(param_groups=(("classifier/backbone/.*", 0.1), (".*", 1.0)), **plain)
  init_a, after_a, _, _ = _run(full, steps=1)
  init_b, after_b, _, _ = _run(tenth, steps=1)
  a0, a1, b0, b1 = map(_flat, (init_a.params, after_a.params, init_b.params, after_b.params))
  for k in a0:
    np.testing.assert_array_equal(a0[k], b0[k])  # same init
    expected = 0.1 if k.startswith("classifier/backbone/") else 1.0
    np.testing.assert_allclose(b1[k] - b0[k], expected * (a1[k] - a0[k]), rtol=1e-4, atol=1e-7)


def _torch_sgd(w, grads, *, lr, momentum, weight_decay, nesterov):
  """torch.optim.SGD's update rule (dampening 0), in float64."""
  w, buf = np.asarray(w, np.float64), None
  for g in grads:
    d = g + weight_decay * w
    if momentum:
      buf = d if buf is None else momentum * buf + d
      d = d + momentum * buf if nesterov else buf
    w = w - lr * d
  return w


def _run_optimizer(config, params, grads):
  tx = optim.create_optimizer(config, params)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


def test_tllib_sgd_matches_torch_formula(make_config):
  """SGD with coupled weight decay and nesterov momentum, as torch.optim.SGD."""
  config = make_config(**{"optimizer.learning_rate": 0.1, "optimizer.momentum": 0.9,
                          "optimizer.weight_decay": 0.01, "schedule.name": "constant"})
  params = {"w": np.array([1.0, -2.0], np.float32)}
  grads = [{"w": np.array([0.5, 0.25], np.float32)}, {"w": np.array([-1.0, 2.0], np.float32)}]
  out = _run_optimizer(config, params, grads)
  np.testing.assert_allclose(out["w"], _torch_sgd(params["w"], [g["w"] for g in grads], lr=0.1,
                                                  momentum=0.9, weight_decay=0.01, nesterov=True),
                             rtol=1e-6)


def test_per_group_settings_express_tllib_afn(make_config):
  """TLlib's AFN optimizer: SGD without nesterov, backbone group momentum 0,
  the others 0.9; a no-decay mask takes biases out of weight decay."""
  config = make_config(**{"optimizer.learning_rate": 0.1, "optimizer.momentum": 0.9,
                          "optimizer.nesterov": False, "optimizer.weight_decay": 0.01,
                          "optimizer.no_decay": (".*/bias",), "schedule.name": "constant",
                          "param_groups": (("backbone/.*", {"momentum": 0.0}),
                                           ("head/.*", {"lr_mult": 0.5, "weight_decay": 0.1}),
                                           (".*", 1.0))})
  rng = np.random.default_rng(0)
  params = {name: {"kernel": rng.normal(size=3).astype(np.float32),
                   "bias": rng.normal(size=3).astype(np.float32)}
            for name in ("backbone", "bottleneck", "head")}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(3)]
  out = _run_optimizer(config, params, grads)
  settings = {"backbone": dict(lr=0.1, momentum=0.0, weight_decay=0.01),
              "bottleneck": dict(lr=0.1, momentum=0.9, weight_decay=0.01),
              "head": dict(lr=0.05, momentum=0.9, weight_decay=0.1)}
  for name, s in settings.items():
    for leaf in ("kernel", "bias"):
      wd = 0.0 if leaf == "bias" else s["weight_decay"]
      expected = _torch_sgd(params[name][leaf], [g[name][leaf] for g in grads], lr=s["lr"],
                            momentum=s["momentum"], weight_decay=wd, nesterov=False)
      np.testing.assert_allclose(out[name][leaf], expected, rtol=1e-5, err_msg=f"{name}/{leaf}")


def test_tllib_inverse_schedule(make_config):
  """`lr * (1 + gamma * step) ** -power` at points worked out by hand: at step
  1000, `1 + gamma * step` is 2 and 2**-0.75 = 0.594604; at 5000 it is 6."""
  config = make_config(**{"optimizer.learning_rate": 0.01, "schedule.gamma": 0.001,
                          "schedule.power": 0.75})
  schedule = optim.create_schedule(config)
  for step, want in ((0, 0.01), (1000, 0.005946035575), (5000, 0.002608474300)):
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6)


@pytest.mark.parametrize("name, fields, points", [
    # Cosine to 0 at total_steps = 100: half-way lr / 2, a quarter of the way
    # lr * (1 + cos(pi / 4)) / 2.
    ("cosine", {}, ((0, 0.1), (25, 0.0853553391), (50, 0.05), (100, 0.0))),
    # x0.1 from the boundary on (TLlib's fine-tuning `--lr-decay-epochs`).
    ("step", {"schedule.boundaries": (60,), "schedule.decay": 0.1},
     ((0, 0.1), (59, 0.1), (60, 0.01), (99, 0.01))),
    # Linear warm-up from 0 over 10 steps, then the constant rate.
    ("constant", {"schedule.warmup_steps": 10}, ((0, 0.0), (5, 0.05), (10, 0.1), (99, 0.1))),
])
def test_schedules_at_known_points(make_config, name, fields, points):
  config = make_config(**{"optimizer.learning_rate": 0.1, "schedule.name": name,
                          "total_steps": 100, **fields})
  schedule = optim.create_schedule(config)
  for step, want in points:
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6, atol=1e-9,
                               err_msg=f"{name} at step {step}")


def test_param_groups_from_the_command_line(digits_data_dir, tmp_path):
  """The README's form: the same Python literal as in a config file."""
  workdir = str(tmp_path / "cli")
  groups = "(('classifier/backbone/.*','frozen'),('classifier/head/.*',{'lr_mult':2.0}),('.*',1.0))"
  result = subprocess.run(
      [sys.executable, "-m", "tljax.main", "--config=configs/source_only.py:digits",
       f"--workdir={workdir}", f"--config.data_dir={digits_data_dir}",
       "--config.model.backbone_kwargs.widths=(8,8,16)", "--config.model.bottleneck_dim=32",
       "--config.batch_size=16", "--config.total_steps=2", "--config.eval_every=2",
       "--config.checkpoint_every=2", "--config.data.num_threads=0",
       f"--config.param_groups={groups}"],
      cwd=REPO, capture_output=True, text=True,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert result.returncode == 0, result.stderr[-2000:]
  with open(f"{workdir}/config.json") as f:
    stored = json.load(f)["param_groups"]
  assert stored[1] == ["classifier/head/.*", {"lr_mult": 2.0}]
  assert "BatchNorm frozen where: backbone/" in result.stderr
