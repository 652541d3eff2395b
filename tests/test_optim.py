"""Parameter groups as data: coverage errors, frozen subtrees, learning-rate multipliers."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tljax import optim, train


def _build(config):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  return train.build(config, 10, mesh), NamedSharding(mesh, P("data"))


def _batches(config, sharding, steps, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, 28, 28, 3)
  for _ in range(steps):
    source = {"image": rng.standard_normal(shape, dtype=np.float32),
              "label": rng.integers(0, 10, config.batch_size).astype(np.int32)}
    target = {"image": rng.standard_normal(shape, dtype=np.float32) + 1.0}
    yield jax.device_put(source, sharding), jax.device_put(target, sharding)


def _run(config, steps):
  setup, sharding = _build(config)
  initial = jax.device_get(setup.state)
  state = setup.state
  for source, target in _batches(config, sharding, steps):
    state, _ = setup.train_step(state, source, target)
  return initial, jax.device_get(state), setup


def _flat(tree):
  return {optim.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_uncovered_parameters_are_named(make_config):
  config = make_config(param_groups=[("backbone/.*", 1.0)])
  with pytest.raises(ValueError, match=r"covers no group for: .*head/kernel.*catch-all"):
    _build(config)


@pytest.mark.parametrize("groups, message", [
    ([("(", 1.0)], "bad regex"),
    ([(".*", "fast")], "must be 'frozen' or a non-negative"),
    ([".*"], "must be a \\(regex, group\\) pair"),
])
def test_malformed_groups(make_config, groups, message):
  with pytest.raises(ValueError, match=message):
    _build(make_config(param_groups=groups))


def test_frozen_subtree_is_bit_identical(make_config):
  config = make_config(param_groups=[("backbone/.*", "frozen"), (".*", 1.0)])
  initial, final, setup = _run(config, steps=3)
  before, after = _flat(initial.params), _flat(final.params)
  moved = {k for k in before if not np.array_equal(before[k], after[k])}
  assert moved and all(not k.startswith("backbone/") for k in moved)
  assert any(k.startswith("head/") for k in moved) and any(k.startswith("bottleneck/") for k in moved)
  for k in before:
    if k.startswith("backbone/"):
      assert before[k].tobytes() == after[k].tobytes(), k
  # Frozen BatchNorm layers keep their running statistics; the bottleneck's move.
  stats_before, stats_after = _flat(initial.model_state), _flat(final.model_state)
  for k in stats_before:
    same = np.array_equal(stats_before[k], stats_after[k])
    assert same == k.startswith("batch_stats/backbone/"), k
  assert setup.frozen_norm and "backbone/bn1" in setup.frozen_norm
  # No optimizer state for frozen leaves: momentum buffers cover the trainable ones only.
  trainable = sum(v.size for k, v in before.items() if not k.startswith("backbone/"))
  assert sum(np.size(x) for x in jax.tree.leaves(final.opt_state) if np.ndim(x) > 0) == trainable


def test_learning_rate_multiplier_scales_the_update(make_config):
  plain = dict(**{"optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
                  "schedule.name": "constant", "model.bottleneck_dropout": 0.0})
  full = make_config(param_groups=[(".*", 1.0)], **plain)
  tenth = make_config(param_groups=[("backbone/.*", 0.1), (".*", 1.0)], **plain)
  init_a, after_a, _ = _run(full, steps=1)
  init_b, after_b, _ = _run(tenth, steps=1)
  a0, a1, b0, b1 = map(_flat, (init_a.params, after_a.params, init_b.params, after_b.params))
  for k in a0:
    np.testing.assert_array_equal(a0[k], b0[k])  # same init
    expected = 0.1 if k.startswith("backbone/") else 1.0
    np.testing.assert_allclose(b1[k] - b0[k], expected * (a1[k] - a0[k]), rtol=1e-4, atol=1e-7)
  backbone_a = np.mean([np.abs(a1[k] - a0[k]).mean() for k in a0 if k.startswith("backbone/")])
  backbone_b = np.mean([np.abs(b1[k] - b0[k]).mean() for k in b0 if k.startswith("backbone/")])
  assert backbone_b < 0.2 * backbone_a


def test_tllib_inverse_schedule(make_config):
  config = make_config(**{"optimizer.learning_rate": 0.01, "schedule.gamma": 0.001,
                          "schedule.power": 0.75})
  schedule = optim.create_schedule(config)
  for step in (0, 1, 100, 5000):
    np.testing.assert_allclose(float(schedule(step)), 0.01 * (1 + 0.001 * step) ** -0.75, rtol=1e-6)


def test_tllib_sgd_matches_torch_formula(make_config):
  """SGD with coupled weight decay and nesterov momentum, as torch.optim.SGD."""
  config = make_config(**{"optimizer.learning_rate": 0.1, "optimizer.momentum": 0.9,
                          "optimizer.weight_decay": 0.01, "schedule.name": "constant"})
  params = {"w": np.array([1.0, -2.0], np.float32)}
  tx, _ = optim.create_optimizer(config, params)
  opt_state = tx.init(params)
  grads = [np.array([0.5, 0.25], np.float32), np.array([-1.0, 2.0], np.float32)]
  w, buf = params["w"].astype(np.float64), np.zeros(2)
  p = params
  for g in grads:
    updates, opt_state = tx.update({"w": g}, opt_state, p)
    p = {"w": p["w"] + updates["w"]}
    d = g + 0.01 * w
    buf = 0.9 * buf + d
    w = w - 0.1 * (d + 0.9 * buf)
  np.testing.assert_allclose(p["w"], w, rtol=1e-6)
