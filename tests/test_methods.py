"""Every method: its config loads, it trains end to end, and its adversary is wired right."""

import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from tljax import losses, train
from tljax.methods import DomainOutputs, create_method, method_names

sys.path.insert(0, str(REPO))

METHODS = ["source_only", "ddc", "dan", "jan", "deep_coral", "cmd", "dann", "cdan", "mcc",
           "mdd", "bsp", "afn", "entropy_min"]


def test_every_registered_method_has_a_config():
  assert sorted(METHODS) == method_names()
  for name in METHODS:
    assert os.path.exists(REPO / "configs" / f"{name}.py")


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("task", ["digits", "office31"])
def test_config_builds_its_method(name, task):
  config = importlib.import_module(f"configs.{name}").get_config(task)
  method = create_method(config.method, num_classes=10, total_steps=config.total_steps)
  assert type(method).__name__ and config.method.name == name


def test_unknown_method_field_is_named():
  with pytest.raises(ValueError, match=r"fields \['trade_of'\] that method 'dann' does not take"):
    create_method(ml_collections.ConfigDict({"name": "dann", "trade_of": 1.0}),
                  num_classes=10, total_steps=10)
  with pytest.raises(ValueError, match="unknown config.method.name 'dannn'"):
    create_method(ml_collections.ConfigDict({"name": "dannn"}), num_classes=10, total_steps=10)


def _short_run(name, digits_data_dir, tmp_path, **method_fields):
  from conftest import tiny_config

  config = importlib.import_module(f"configs.{name}").get_config("digits")
  config.method.update(method_fields)
  tiny = tiny_config(digits_data_dir, total_steps=2, eval_every=2, checkpoint_every=2, log_every=1)
  for key in ("data_dir", "batch_size", "eval_batch_size", "total_steps", "eval_every",
              "checkpoint_every", "log_every"):
    config[key] = tiny[key]
  config.data.num_threads = 0
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32
  if config.model.head_hidden:
    config.model.head_hidden = 32
  if "head_width" in config.method:
    config.method.head_width = 32
  if "hidden_sizes" in config.method:
    config.method.hidden_sizes = (32, 32)
  workdir = str(tmp_path / name)
  results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:2])
  assert results["method"] == name and results["step"] == 2
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if '"train"' in l]


@pytest.mark.parametrize("name", METHODS)
def test_short_run(name, digits_data_dir, tmp_path):
  lines = _short_run(name, digits_data_dir, tmp_path)
  assert len(lines) == 2 and all(np.isfinite(l["loss"]) for l in lines)
  if name == "source_only":
    assert all(l["transfer_loss"] == 0 for l in lines)
  else:
    assert all(l["transfer_loss"] != 0 for l in lines)


def test_trade_off_warmup_follows_the_progressive_schedule(digits_data_dir, tmp_path):
  method = create_method(ml_collections.ConfigDict({"name": "jan", "trade_off_warmup": 100}),
                         num_classes=4, total_steps=100)
  for step in (0, 10, 50, 100, 300):
    p = min(step / 100, 1.0)
    np.testing.assert_allclose(method.trade_off_scale(jnp.asarray(step)),
                               2 / (1 + np.exp(-10 * p)) - 1, rtol=1e-6, atol=1e-7)
  assert float(create_method(ml_collections.ConfigDict({"name": "jan"}), num_classes=4,
                             total_steps=100).trade_off_scale(jnp.asarray(0))) == 1.0
  # In the train step: weight 0 at the first step, then the schedule's value.
  lines = _short_run("dan", digits_data_dir, tmp_path, trade_off_warmup=4)
  assert lines[0]["trade_off_scale"] == 0 and lines[0]["transfer_loss"] == 0
  np.testing.assert_allclose(lines[1]["trade_off_scale"], 2 / (1 + np.exp(-2.5)) - 1, rtol=1e-6)
  assert lines[1]["transfer_loss"] > 0


def _outputs(n=8, d=6, c=4, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return DomainOutputs(f(n, d), f(n, d) + 1.0, f(n, c), f(n, c), jnp.asarray(rng.integers(0, c, n)))


def _method_and_vars(name, **fields):
  method = create_method(ml_collections.ConfigDict({"name": name, **fields}), num_classes=4,
                         total_steps=100)
  outputs = _outputs()
  variables = method.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, outputs,
                          step=jnp.asarray(0), train=False)
  return method, variables, outputs


@pytest.mark.parametrize("name", ["dann", "cdan", "mdd"])
def test_adversary_sees_the_reversed_gradient(name, monkeypatch):
  """d(term)/d(features) = -coeff * d(adversary's own loss)/d(features), while the
  adversary's parameters descend that loss directly."""
  fields = {"trade_off": 1.0, "head_dropout": 0.0} if name == "mdd" else {"trade_off": 1.0}
  method, variables, outputs = _method_and_vars(name, **fields)
  step = jnp.asarray(700)
  coeff = float(losses.warm_start_coeff(step, hi=0.1 if name == "mdd" else 1.0))

  def term(params, features_s, features_t):
    out = outputs.replace(source_features=features_s, target_features=features_t)
    (value, _), _ = method.apply({**variables, "params": params}, out, step=step, train=True,
                                 mutable=["batch_stats"])
    return value

  args = (variables["params"], outputs.source_features, outputs.target_features)
  with_reversal = jax.grad(term, argnums=(0, 1, 2))(*args)
  # The same computation with the reversal layer made the identity.
  monkeypatch.setattr(losses, "gradient_reversal", lambda x, coeff=1.0: x)
  plain = jax.grad(term, argnums=(0, 1, 2))(*args)
  for a, b in zip(jax.tree.leaves(with_reversal[0]), jax.tree.leaves(plain[0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # adversary: plain gradient
  for a, b in zip(with_reversal[1:], plain[1:]):
    np.testing.assert_allclose(a, -coeff * b, rtol=1e-4, atol=1e-8)  # features: reversed
  assert float(jnp.abs(with_reversal[1]).max()) > 0


def test_cdan_randomized_map_is_a_fixed_constant():
  method, variables, outputs = _method_and_vars("cdan", randomized=True, randomized_dim=16)
  rf, rg = variables["constants"]["randomized_map"]
  assert rf.shape == (6, 16) and rg.shape == (4, 16)
  assert "randomized_map" not in jax.tree_util.tree_structure(variables["params"]).__repr__()
  _, updates = method.apply(variables, outputs, step=jnp.asarray(5), train=True,
                            mutable=["batch_stats", "constants"])
  np.testing.assert_array_equal(updates["constants"]["randomized_map"][0], rf)


def test_dan_sums_layers_and_scales_by_trade_off():
  outputs = _outputs()
  method, variables, _ = _method_and_vars("dan", trade_off=0.5, layers=("features", "logits"),
                                          linear=False)
  (term, metrics), _ = method.apply(variables, outputs, step=jnp.asarray(0), mutable=["batch_stats"])
  expected = (losses.mk_mmd(outputs.source_features, outputs.target_features)
              + losses.mk_mmd(outputs.source_logits, outputs.target_logits))
  np.testing.assert_allclose(term, 0.5 * expected, rtol=1e-6)
  assert set(metrics) == {"mk_mmd_features", "mk_mmd_logits"}
