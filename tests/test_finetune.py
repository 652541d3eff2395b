"""Fine-tuning: the regularisers (L2-SP, DELTA, BSS, Co-Tuning), the label views and
multi-task heads.

Every loss against a closed form or a numpy reference; each method's state
against an independent computation (L2-SP's penalty, DELTA's channel attention,
Co-Tuning's source head and category relationship); short fine-tuning runs
from a pretrained tiny model; multi-task heads' gradient isolation, their
accuracies, a two-device run and its resume.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import tljax.losses as L
from conftest import REPO, flat, set_fields, tiny_config, train_lines
from tljax import train
from tljax.data import open_domain, views
from tljax.methods import base
from tljax.methods.delta import fit_softmax_regression
from tljax.workdir import classifier_variables, state_at

sys.path.insert(0, str(REPO))  # the configs package


def _random(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels].mean()


# ----------------------------------------------------------------------------
# Losses against numpy.
# ----------------------------------------------------------------------------


def _tree(seed):
  return {"a": {"kernel": _random(seed, 3, 4), "bias": _random(seed + 1, 4)},
          "b": _random(seed + 2, 2, 2, 3)}


def test_l2_and_starting_point_l2_match_numpy():
  w, w0 = _tree(0), _tree(10)
  leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree.leaves(t)]
  np.testing.assert_allclose(L.l2(w), 0.5 * sum((x ** 2).sum() for x in leaves(w)), rtol=1e-6)
  expected = 0.5 * sum(((x - y) ** 2).sum() for x, y in zip(leaves(w), leaves(w0)))
  np.testing.assert_allclose(L.starting_point_l2(w, w0), expected, rtol=1e-6)
  assert float(L.starting_point_l2(w, w)) == 0.0
  # d/dw = w - w0; the starting point is a constant.
  grad_w, grad_w0 = jax.grad(L.starting_point_l2, argnums=(0, 1))(w, w0)
  for g, x, y in zip(jax.tree.leaves(grad_w), leaves(w), leaves(w0)):
    np.testing.assert_allclose(g, x - y, rtol=1e-6, atol=1e-6)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grad_w0))
  assert float(L.l2({})) == 0.0


def test_behavioral_regularization_matches_numpy():
  student = [_random(0, 4, 5, 5, 3), _random(1, 4, 6)]
  teacher = [_random(2, 4, 5, 5, 3), _random(3, 4, 6)]
  expected = sum(0.5 * ((s.astype(np.float64) - t) ** 2).sum() for s, t in zip(student, teacher))
  np.testing.assert_allclose(L.behavioral_regularization(student, teacher), expected, rtol=1e-6)
  grads = jax.grad(L.behavioral_regularization, argnums=1)(student, teacher)
  assert all(np.all(np.asarray(g) == 0) for g in grads)  # the teacher gets no gradient


def test_attention_behavioral_regularization_matches_a_loop_reference():
  student = [_random(0, 3, 4, 5, 6), _random(1, 3, 7)]
  teacher = [_random(2, 3, 4, 5, 6), _random(3, 3, 7)]
  attention = [_softmax(_random(4, 6)), _softmax(_random(5, 7))]
  expected = 0.0
  for s, t, a in zip(student, teacher, attention):
    s, t = s.astype(np.float64), t.astype(np.float64)
    channels = s.shape[-1]
    positions = int(np.prod(s.shape[1:-1]))
    for b in range(s.shape[0]):
      for c in range(channels):
        # TLlib: 0.5 * C a_c |FM_bc(w) - FM_bc(w0)|^2 / (H W) per example and channel.
        distance = ((s[b, ..., c] - t[b, ..., c]) ** 2).sum()
        expected += 0.5 * channels * a[c] * distance / positions
  np.testing.assert_allclose(L.attention_behavioral_regularization(student, teacher, attention),
                             expected, rtol=1e-5)
  # Uniform attention: the plain distance over the number of positions.
  uniform = [np.full((6,), 1 / 6, np.float32)]
  np.testing.assert_allclose(
      L.attention_behavioral_regularization(student[:1], teacher[:1], uniform),
      L.behavioral_regularization(student[:1], teacher[:1]) / 20, rtol=1e-5)


def test_channel_attention_is_a_softmax_of_standardised_importances():
  increases = np.asarray([0.5, 0.1, 2.0, -0.3, 0.0], np.float64)
  z = (increases - increases.mean()) / increases.std()
  for temperature in (5.0, 1.0):
    np.testing.assert_allclose(L.channel_attention(increases, temperature=temperature),
                               _softmax(z / temperature), rtol=1e-5)
  # The most important channel weighs most; equal importances give equal weights.
  assert int(np.argmax(L.channel_attention(increases))) == 2
  np.testing.assert_allclose(L.channel_attention(np.full((4,), 0.7)), np.full((4,), 0.25),
                             rtol=1e-6)


@pytest.mark.parametrize("shape", [(16, 6), (5, 12)])
@pytest.mark.parametrize("k", [1, 2])
def test_batch_spectral_shrinkage_matches_numpy_svd(shape, k):
  features = _random(0, *shape, scale=3.0)
  singular_values = np.linalg.svd(features.astype(np.float64), compute_uv=False)
  expected = np.sum(np.sort(singular_values)[:k] ** 2)
  np.testing.assert_allclose(L.batch_spectral_shrinkage(features, k=k), expected, rtol=1e-4)


def test_batch_spectral_shrinkage_is_zero_for_a_rank_deficient_batch():
  features = _random(0, 8, 1) @ _random(1, 1, 5)  # rank 1: the smallest singular values are 0
  largest = np.linalg.svd(features.astype(np.float64), compute_uv=False)[0] ** 2
  assert 0 <= float(L.batch_spectral_shrinkage(features, k=1)) < 1e-6 * largest
  np.testing.assert_allclose(L.batch_spectral_shrinkage(features, k=5), largest, rtol=1e-5)
  with pytest.raises(ValueError, match="k=6"):
    L.batch_spectral_shrinkage(features, k=6)


def test_co_tuning_loss_matches_numpy():
  logits = _random(0, 6, 5, scale=2.0)
  targets = _softmax(_random(1, 6, 5))
  log_probs = np.log(_softmax(logits.astype(np.float64)))
  np.testing.assert_allclose(L.co_tuning_loss(logits, targets),
                             np.mean(np.sum(-targets * log_probs, axis=1)), rtol=1e-5)
  # One-hot targets: the cross-entropy with those labels.
  labels = np.asarray([0, 3, 1, 1, 4, 2])
  np.testing.assert_allclose(L.co_tuning_loss(logits, np.eye(5)[labels]),
                             _cross_entropy(logits, labels), rtol=1e-5)


def test_category_relationship_is_the_per_class_mean_probability():
  probabilities = _softmax(_random(0, 20, 7))
  labels = np.random.default_rng(1).integers(0, 3, 20)
  labels[labels == 2] = 0  # class 2 has no examples; class 3 is beyond the labels seen
  relationship = np.asarray(L.category_relationship(probabilities, labels, num_classes=4))
  for c in range(4):
    members = probabilities[labels == c]
    expected = members.mean(0) if len(members) else np.full((7,), 1 / 7)
    np.testing.assert_allclose(relationship[c], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(relationship.sum(1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------
# Label views.
# ----------------------------------------------------------------------------


def test_label_maps_and_stratified_subsets():
  labels = np.arange(10)
  np.testing.assert_array_equal(views.map_label_array("parity", labels, 10), labels % 2)
  np.testing.assert_array_equal(views.map_label_array("ge5", labels, 10), (labels >= 5))
  np.testing.assert_array_equal(views.map_label_array("ge5", jnp.asarray(labels), 10),
                                (labels >= 5))
  assert views.mapped_num_classes("parity", 10) == 2 and views.mapped_num_classes(None, 10) == 10
  many = np.repeat(np.arange(4), [50, 30, 20, 3])
  kept = views.stratified_indices(many, 0.1, seed=0)
  counts = np.bincount(many[kept], minlength=4)
  np.testing.assert_array_equal(counts, [5, 3, 2, 1])  # round(0.1 n), at least one per class
  assert len(np.unique(kept)) == len(kept)
  np.testing.assert_array_equal(kept, views.stratified_indices(many, 0.1, seed=0))
  assert not np.array_equal(kept, views.stratified_indices(many, 0.1, seed=1))
  with pytest.raises(ValueError, match="source_fraction"):
    views.stratified_indices(many, 0.0, seed=0)


def test_views_of_a_domain(digits_data_dir):
  domain = open_domain("digits", "train", data_dir=digits_data_dir)
  labels = views.domain_labels(domain)
  parity = views.map_labels(domain, "parity")
  assert parity.num_classes == 2 and len(parity) == len(domain)
  np.testing.assert_array_equal(views.domain_labels(parity), labels % 2)
  np.testing.assert_array_equal(parity.source[3]["image"], domain.source[3]["image"])
  part = views.stratified_subset(domain, 0.1, seed=0)
  indices = views.stratified_indices(labels, 0.1, seed=0)
  assert len(part) == len(indices) < len(domain) // 5
  np.testing.assert_array_equal(views.domain_labels(part), labels[indices])
  np.testing.assert_array_equal(part.source[1]["image"], domain.source[int(indices[1])]["image"])


# ----------------------------------------------------------------------------
# Methods, on the steps' own pieces.
# ----------------------------------------------------------------------------


def _method_config(name: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """`configs/<name>.py:digits` shrunk to `tiny_config`'s network and four steps."""
  config = importlib.import_module(f"configs.{name}").get_config("digits")
  tiny = tiny_config(data_dir, total_steps=4, eval_every=4, checkpoint_every=2, log_every=1)
  for key in ("data_dir", "batch_size", "eval_batch_size", "total_steps", "eval_every",
              "checkpoint_every", "log_every"):
    config[key] = tiny[key]
  config.schedule.boundaries = (3,) if config.schedule.name == "step" else ()
  config.data.num_threads = 0
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32
  if name == "delta":
    config.method.attention_steps = 20
  set_fields(config, overrides)
  return config


def _setup(config, num_classes=10, devices=1):
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:devices])
  return train.build(config, num_classes, mesh), NamedSharding(mesh, P("data"))


def _images(seed, n):
  return np.random.default_rng(seed).standard_normal((n, 28, 28, 3)).astype(np.float32)


def test_l2_sp_penalty_is_its_closed_form(digits_data_dir):
  config = _method_config("l2_sp", digits_data_dir, **{"method.trade_off_backbone": 0.3,
                                                      "method.trade_off_head": 0.05})
  setup, _ = _setup(config)
  method, state = setup.method, setup.state
  params = jax.device_get(state.params)
  flat_params = flat(params, np.float64)
  moved = jax.tree.map(lambda x: x + _random(7, *x.shape, scale=0.1), params)
  moved_flat = flat(moved, np.float64)
  pretrained = [k for k in flat_params if "'backbone'" in k or "'bottleneck'" in k]
  new = [k for k in flat_params if "'head'" in k]
  assert pretrained and new and len(pretrained) + len(new) == len(flat_params)
  sp = 0.5 * sum(((moved_flat[k] - flat_params[k]) ** 2).sum() for k in pretrained)
  head = 0.5 * sum((moved_flat[k] ** 2).sum() for k in new)
  penalty, metrics = method.regularization(moved, state.method_state)
  np.testing.assert_allclose(metrics["l2_sp"], sp, rtol=1e-5)
  np.testing.assert_allclose(metrics["l2_head"], head, rtol=1e-5)
  np.testing.assert_allclose(penalty, 0.3 * sp + 0.05 * head, rtol=1e-5)
  with pytest.raises(ValueError, match="matches no parameter"):
    _setup(_method_config("l2_sp", digits_data_dir, **{"method.pretrained": "classifier/bb/.*"}))


def test_delta_channel_attention_matches_zeroing_each_filter(digits_data_dir):
  """Each channel's attention from the increase of a softmax regression's loss
  when that channel's filter is zeroed, recomputed here filter by filter."""
  config = _method_config("delta", digits_data_dir)
  setup, _ = _setup(config)
  method, ctx, state = setup.method, setup.ctx, setup.state
  images = jnp.asarray(_images(0, 48))
  labels = np.random.default_rng(1).integers(0, 10, 48)

  def predict(variables):
    features, logits = ctx.classifier.apply(variables, images, train=False)
    return np.asarray(features), np.asarray(logits), labels

  starting = jax.device_get(base.owned(state.variables, base.CLASSIFIER))
  before = state.method_state["attention"]
  assert sorted(before) == ["backbone/conv1", "backbone/conv2", "backbone/conv3"]
  refreshed = method.refresh(ctx, state, predict).method_state["attention"]
  features, _, _ = predict(starting)
  kernel, bias = fit_softmax_regression(jnp.asarray(features), jnp.asarray(labels),
                                        num_classes=10, steps=config.method.attention_steps,
                                        learning_rate=config.method.attention_lr)
  kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
  intact = _cross_entropy(features @ kernel + bias, labels)
  for layer in before:
    conv = layer.split("/")[1]
    weights = np.asarray(starting["params"]["backbone"][conv]["kernel"])
    increases = []
    for channel in range(weights.shape[-1]):
      zeroed = weights.copy()
      zeroed[..., channel] = 0
      params = jax.tree.map(lambda x: x, starting["params"])
      params["backbone"] = {**params["backbone"], conv: {**params["backbone"][conv],
                                                         "kernel": zeroed}}
      f, _, _ = predict({**starting, "params": params})
      increases.append(_cross_entropy(f @ kernel + bias, labels) - intact)
    increases = np.asarray(increases)
    z = (increases - increases.mean()) / increases.std()
    np.testing.assert_allclose(refreshed[layer], _softmax(z / config.method.attention_temperature),
                               rtol=2e-3, atol=1e-5, err_msg=layer)
    np.testing.assert_allclose(before[layer], 1 / weights.shape[-1])
  # Without attention the refresh changes nothing.
  plain = _method_config("delta", digits_data_dir, **{"method.regularization": "feature_map"})
  setup, _ = _setup(plain)
  after = setup.method.refresh(setup.ctx, setup.state, predict)
  assert after is setup.state


def test_delta_compares_the_chosen_layers_with_the_starting_network(digits_data_dir):
  """Step 0: the student (training mode) and the teacher (the same weights,
  evaluation mode) differ only through BatchNorm's statistics; the term is
  recomputed from maps captured with flax directly."""
  config = _method_config("delta", digits_data_dir, **{"method.regularization": "feature_map"})
  setup, sharding = _setup(config)
  method, ctx, state = setup.method, setup.ctx, setup.state
  batch = {"source": {"image": jnp.asarray(_images(2, 16)),
                      "label": jnp.asarray(np.arange(16) % 10, jnp.int32)}}
  _, metrics = method.train_step(ctx, state, batch, jax.random.key(0))
  variables = base.owned(state.variables, base.CLASSIFIER)
  maps = {}
  for train_mode in (True, False):
    kwargs = {"mutable": ["intermediates", "batch_stats"]} if train_mode else {
        "mutable": ["intermediates"]}
    _, updates = ctx.classifier.apply(variables, batch["source"]["image"], train=train_mode,
                                      capture_intermediates=True, **kwargs)
    maps[train_mode] = [np.asarray(updates["intermediates"]["backbone"][f"conv{i}"]["__call__"][0],
                                   np.float64) for i in (1, 2, 3)]
  expected = sum(0.5 * ((s - t) ** 2).sum() for s, t in zip(maps[True], maps[False]))
  assert expected > 0
  np.testing.assert_allclose(metrics["behavioral"], expected, rtol=1e-4)
  head = 0.5 * sum((np.asarray(x, np.float64) ** 2).sum()
                   for x in jax.tree.leaves(variables["params"]["head"]))
  np.testing.assert_allclose(metrics["l2_head"], head, rtol=1e-5)


def test_bss_adds_the_smallest_singular_values_of_the_features(digits_data_dir):
  config = _method_config("bss", digits_data_dir, **{"method.k": 2, "method.trade_off": 0.5})
  setup, _ = _setup(config)
  batch = {"source": {"image": jnp.asarray(_images(3, 16)),
                      "label": jnp.asarray(np.arange(16) % 10, jnp.int32)}}
  variables = setup.state.variables
  _, (_, metrics) = setup.method.loss(setup.ctx, variables, batch, setup.state.step,
                                      jax.random.key(0))
  features, _ = setup.ctx.classifier.apply(base.owned(variables, base.CLASSIFIER),
                                           batch["source"]["image"], train=True,
                                           mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.key(0)})[0]
  singular_values = np.sort(np.linalg.svd(np.asarray(features, np.float64), compute_uv=False))
  np.testing.assert_allclose(metrics["bss"], (singular_values[:2] ** 2).sum(), rtol=1e-3)
  np.testing.assert_allclose(metrics["transfer_loss"], 0.5 * metrics["bss"], rtol=1e-6)


# ----------------------------------------------------------------------------
# Fine-tuning runs from a pretrained model.
# ----------------------------------------------------------------------------

FINETUNE_METHODS = ["finetune", "l2_sp", "delta", "bss", "co_tuning"]


class Runs:
  """A tiny pretrained model (two steps of `source_only` on digits) and the
  runs fine-tuned from it, made once per module."""

  def __init__(self, data_dir, root):
    self.data_dir, self.root = data_dir, root

  @functools.cache
  def pretrained(self) -> str:
    workdir = os.path.join(self.root, "pretrained")
    config = _method_config("source_only", self.data_dir, total_steps=2, eval_every=2)
    train.train_and_evaluate(config, workdir, devices=jax.devices()[:2])
    return workdir

  @functools.cache
  def finetuned(self, name) -> tuple[str, dict]:
    workdir = os.path.join(self.root, name)
    config = _method_config(name, self.data_dir, **{"model.init": self.pretrained()})
    return workdir, train.train_and_evaluate(config, workdir, devices=jax.devices()[:2])


@pytest.fixture(scope="module")
def runs(digits_data_dir, tmp_path_factory):
  return Runs(digits_data_dir, str(tmp_path_factory.mktemp("finetune")))


@pytest.mark.parametrize("name", FINETUNE_METHODS)
def test_finetuning_run_from_a_pretrained_model(name, runs):
  workdir, results = runs.finetuned(name)
  assert results["step"] == 4 and results["initialised_from"]
  lines = train_lines(workdir)
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for line in lines:
    assert all(np.isfinite(v) for k, v in line.items() if k != "kind"), line
  if name != "finetune":
    assert lines[-1]["transfer_loss"] > 0
  pretrained, _ = classifier_variables(runs.pretrained())
  final, _ = state_at(workdir, None)
  if name in ("l2_sp", "delta"):
    # The starting point is the pretrained network (its head excepted), not a fresh one.
    kept = final["method_state"]["starting_point"]["classifier"] if name == "l2_sp" else \
        final["method_state"]["starting_point"]["params"]
    for part in ("backbone", "bottleneck"):
      mine, theirs = flat(kept[part]), flat(pretrained["params"][part])
      assert mine.keys() == theirs.keys()
      assert all(mine[k].tobytes() == theirs[k].tobytes() for k in mine), part
  moved = [k for k, v in flat(final["params"]["classifier"]["backbone"]).items()
           if v.tobytes() != flat(pretrained["params"]["backbone"])[k].tobytes()]
  assert moved  # and then trained


def test_co_tuning_keeps_the_pretrained_head_and_learns_the_relationship(runs, digits_data_dir):
  """The source head starts as the checkpoint's head; the relationship is, per
  target class, the mean softmax of the pretrained classifier (backbone,
  bottleneck and its own head) over that class's training examples."""
  config = _method_config("co_tuning", digits_data_dir, **{"model.init": runs.pretrained()})
  pretrained, _ = classifier_variables(runs.pretrained())
  setup, sharding = _setup(config)
  head = setup.state.params["method"]["source_head"]
  assert flat(head).keys() == flat(pretrained["params"]["head"]).keys()
  for k, v in flat(pretrained["params"]["head"]).items():
    assert np.asarray(flat(head)[k]).tobytes() == v.tobytes(), k
  # The run's relationship, against the pretrained classifier's own predictions.
  state, _ = state_at(runs.finetuned("co_tuning")[0], None)
  domain = open_domain(config.source, config.source_split, data_dir=digits_data_dir)
  logits, labels = [], []
  for batch in train.eval_batches(config, domain, sharding):
    keep = np.asarray(batch["mask"]) > 0
    _, l = setup.predict(pretrained, batch["image"])
    logits.append(np.asarray(l)[keep])
    labels.append(np.asarray(batch["label"])[keep])
  probabilities = _softmax(np.concatenate(logits).astype(np.float64))
  labels = np.concatenate(labels)
  expected = np.stack([probabilities[labels == c].mean(0) for c in range(10)])
  np.testing.assert_allclose(state["method_state"]["relationship"], expected, rtol=1e-4,
                             atol=1e-6)
  assert np.abs(expected - 0.1).max() > 1e-3  # not the uniform starting value


def test_delta_attention_is_computed_once_and_checkpointed(runs):
  start, _ = state_at(runs.finetuned("delta")[0], 2)
  end, _ = state_at(runs.finetuned("delta")[0], None)
  for layer, attention in start["method_state"]["attention"].items():
    np.testing.assert_allclose(attention.sum(), 1.0, rtol=1e-5)
    assert np.ptp(attention) > 0  # not the uniform placeholder
    np.testing.assert_array_equal(end["method_state"]["attention"][layer], attention)


def test_label_fraction_and_label_map_reach_the_run(digits_data_dir, tmp_path):
  config = _method_config("finetune", digits_data_dir, total_steps=2, eval_every=2,
                          **{"data.source_fraction": 0.1, "data.label_map": "parity"})
  domains = train.open_data(config, str(tmp_path / "data"))
  full = open_domain("digits_m", "train", data_dir=digits_data_dir)
  digit_labels = views.domain_labels(full)
  kept = views.stratified_indices(digit_labels % 2, 0.1, seed=0)
  assert domains.num_classes == domains.target_eval.num_classes == 2
  np.testing.assert_array_equal(views.domain_labels(domains.source_train), digit_labels[kept] % 2)
  test = open_domain("digits_m", "test", data_dir=digits_data_dir)
  np.testing.assert_array_equal(views.domain_labels(domains.target_eval),
                                views.domain_labels(test) % 2)
  results = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert len(results["target_per_class_accuracy"]) == 2
  state, _ = state_at(str(tmp_path / "run"), None)
  assert state["params"]["classifier"]["head"]["kernel"].shape[-1] == 2


# ----------------------------------------------------------------------------
# Multi-task heads.
# ----------------------------------------------------------------------------


def _multitask_config(arg, data_dir, **overrides):
  config = importlib.import_module("configs.multitask").get_config(arg)
  tiny = tiny_config(data_dir, total_steps=4, eval_every=4, checkpoint_every=1, log_every=1)
  for key in ("data_dir", "batch_size", "eval_batch_size", "total_steps", "eval_every",
              "checkpoint_every", "log_every"):
    config[key] = tiny[key]
  config.keep_checkpoints = 3
  config.data.num_threads = 0
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32
  set_fields(config, overrides)
  return config


def _heads(params):
  """`{head name: its parameter leaves}`: the classifier's own and the method's."""
  out = {"classifier/head": flat(params["classifier"]["head"])}
  out.update({f"method/{k}": flat(v) for k, v in params.get("method", {}).items()})
  return out


@pytest.mark.parametrize("arg", ["digits", "two_datasets"])
def test_each_task_reaches_only_its_head_and_the_trunk(arg, digits_data_dir):
  config = _multitask_config(arg, digits_data_dir)
  setup, _ = _setup(config)
  method, ctx, state = setup.method, setup.ctx, setup.state
  rng = np.random.default_rng(0)
  batch = {"source": {"image": jnp.asarray(_images(0, 16)),
                      "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}}
  for task in method.tasks:
    if task.dataset:
      batch[task.name] = {"image": jnp.asarray(_images(1, 16)),
                          "label": jnp.asarray(rng.integers(0, task.num_classes, 16), jnp.int32)}
  head_of = {t.name: "classifier/head" if i == 0 else f"method/{t.name}"
             for i, t in enumerate(method.tasks)}
  assert sorted(_heads(state.params)) == sorted(head_of.values())

  def task_loss(params, name, index=None):
    variables = {**state.variables, "params": params}
    if index is None:
      losses, _, _ = method.task_losses(ctx, variables, batch, jax.random.key(0))
      return losses[name]
    loss, _ = method._one_task_loss(ctx, index, variables, batch, jax.random.key(0))  # pylint: disable=protected-access
    return loss

  for index, task in enumerate(method.tasks):
    for sampled in (None, index):  # 'all' (one pass over every batch) and 'uniform'
      grads = jax.grad(task_loss)(state.params, task.name, sampled)
      for head, leaves in _heads(grads).items():
        norms = [float(np.abs(g).max()) for g in leaves.values()]
        if head == head_of[task.name]:
          assert all(n > 0 for n in norms), (task.name, head)
        else:
          assert all(n == 0 for n in norms), (task.name, head, norms)
      trunk = flat(grads["classifier"]["backbone"])
      assert all(float(np.abs(g).max()) > 0 for g in trunk.values()), task.name


class MultiTaskRuns:
  def __init__(self, data_dir, root):
    self.data_dir, self.root = data_dir, root

  @functools.cache
  def full(self, arg, sampling) -> str:
    workdir = os.path.join(self.root, f"{arg}_{sampling}", "full")
    train.train_and_evaluate(_multitask_config(arg, self.data_dir, **{"method.sampling": sampling}),
                             workdir, devices=jax.devices()[:2])
    return workdir

  @functools.cache
  def resumed(self, arg, sampling) -> str:
    workdir = os.path.join(self.root, f"{arg}_{sampling}", "resumed")
    shutil.copytree(self.full(arg, sampling), workdir)
    for step in ("3", "4"):
      shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    os.remove(os.path.join(workdir, "results.json"))
    train.train_and_evaluate(_multitask_config(arg, self.data_dir, **{"method.sampling": sampling}),
                             workdir, devices=jax.devices()[:2])
    return workdir


@pytest.fixture(scope="module")
def multitask_runs(digits_data_dir, tmp_path_factory):
  return MultiTaskRuns(digits_data_dir, str(tmp_path_factory.mktemp("multitask")))


def test_multitask_run_reports_each_heads_accuracy(multitask_runs, digits_data_dir):
  """Two devices, every task every step; each head's test accuracy recomputed
  from the final state."""
  workdir = multitask_runs.full("digits", "all")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  metrics = results["method_metrics"]
  assert sorted(metrics) == ["digit_accuracy", "ge5_accuracy", "parity_accuracy"]
  assert metrics["digit_accuracy"] == results["target_accuracy"]
  lines = train_lines(workdir)
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for line in lines:
    np.testing.assert_allclose(line["loss"], line["digit_loss"] + line["parity_loss"]
                               + line["ge5_loss"], rtol=1e-5)
  config = _multitask_config("digits", digits_data_dir)
  setup, sharding = _setup(config)
  state, _ = state_at(workdir, None)
  variables = {"params": state["params"], **state["model_state"]}
  domain = open_domain("digits", config.eval_source_split, data_dir=digits_data_dir)
  correct = {"parity": [], "ge5": []}
  rules = {"parity": lambda y: y % 2, "ge5": lambda y: (y >= 5).astype(int)}
  for batch in train.eval_batches(config, domain, sharding):
    keep = np.asarray(batch["mask"]) > 0
    features, _ = setup.predict(base.owned(variables, base.CLASSIFIER), batch["image"])
    for name in correct:
      logits, _ = setup.ctx.apply_network(name, variables, features, train=False)
      labels = rules[name](np.asarray(batch["label"]))
      correct[name].append((np.argmax(np.asarray(logits), -1) == labels)[keep])
  for name, hits in correct.items():
    np.testing.assert_allclose(metrics[f"{name}_accuracy"], np.concatenate(hits).mean(),
                               rtol=1e-6)


def test_multitask_uniform_sampling_resumes_bit_identically(multitask_runs):
  """Two datasets, one task drawn per step on two devices; a run resumed from
  step 2 repeats the uninterrupted one."""
  full = multitask_runs.full("two_datasets", "uniform")
  lines = train_lines(full)
  drawn = [int(l["task"]) for l in lines]
  assert set(drawn) <= {0, 1}
  for line in lines:
    own = ["digits_loss", "digits_m_loss"][int(line["task"])]
    np.testing.assert_allclose(line["loss"], line[own], rtol=1e-6)
  with open(os.path.join(full, "results.json")) as f:
    assert sorted(json.load(f)["method_metrics"]) == ["digits_accuracy", "digits_m_accuracy"]
  a, step = state_at(full, None)
  b, resumed_step = state_at(multitask_runs.resumed("two_datasets", "uniform"), None)
  assert step == resumed_step == 4
  for part in ("params", "model_state", "method_state", "opt_state"):
    fa, fb = flat(a[part]), flat(b[part])
    assert fa.keys() == fb.keys()
    for k in fa:
      assert fa[k].tobytes() == fb[k].tobytes(), (part, k)


def test_multitask_config_errors(digits_data_dir):
  from tljax.methods import create_method
  method = _multitask_config("digits", digits_data_dir).method.to_dict()
  with pytest.raises(ValueError, match="distinct names"):
    create_method({**method, "tasks": [method["tasks"][0]] * 2}, num_classes=10)
  with pytest.raises(ValueError, match="sampling"):
    create_method({**method, "sampling": "round_robin"}, num_classes=10)
  with pytest.raises(ValueError, match="lacks"):
    create_method({**method, "tasks": [{"name": "digit"}]}, num_classes=10)
  wrong = dict(method["tasks"][1], num_classes=3)
  m = create_method({**method, "tasks": [method["tasks"][0], wrong]}, num_classes=10)
  with pytest.raises(ValueError, match="has 2 classes"):
    m.networks(10, None)


def test_multitask_uniform_task_drawn_on_the_host_equals_the_in_step_draw(digits_data_dir):
  """'uniform' sampling: the trainer draws each step's task on the host and
  compiles one step per task; the same steps through one function that draws
  and branches inside (`lax.switch`) pick the same tasks and end the same."""
  config = _multitask_config("digits", digits_data_dir, **{"method.sampling": "uniform"})
  setup, sharding = _setup(config)
  assert setup.train_step.has_variants
  anywhere = jax.jit(functools.partial(train.guarded_step, method=setup.method, ctx=setup.ctx))
  rng = np.random.default_rng(0)
  host = jax.tree.map(lambda x: x.copy(), setup.state)
  inside = jax.tree.map(lambda x: x.copy(), setup.state)
  drawn = []
  for step in range(6):
    batch = jax.device_put({"source": {
        "image": _images(step, config.batch_size),
        "label": rng.integers(0, 10, config.batch_size).astype(np.int32)}}, sharding)
    host, host_metrics = setup.train_step(host, batch, step)
    inside, inside_metrics = anywhere(inside, batch)
    assert float(host_metrics["task"]) == float(inside_metrics["task"])
    drawn.append(int(host_metrics["task"]))
    np.testing.assert_allclose(float(host_metrics["loss"]), float(inside_metrics["loss"]),
                               rtol=1e-5)
  assert len(set(drawn)) > 1, drawn  # the draw varies with the step
  for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(inside.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
