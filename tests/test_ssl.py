"""Semi-supervised learning: TLlib's protocol and its methods.

The protocol (`data.labels_per_class`, `configs/default.py`'s `ssl_*` tasks)
against a restatement of TLlib's `x_u_split`; what reaches the step; the
semi-supervised losses against hand-worked values and restatements of TLlib's
loops; and per method a short run on the embedded `ssl_digits` task (finite
metrics), a resumed run bit-identical to an uninterrupted one, and one
device against two. The first steps of each method against PyTorch
restatements of TLlib's modules are in `test_ssl_parity.py`.
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

import tljax.losses as L
from conftest import REPO, SSL_METHODS, flat, set_fields, train_lines
from tljax import models, train
from tljax.data import open_domain, preprocess, views
from tljax.data import task as task_lib
from tljax.methods import create_method
from tljax.methods.flexmatch import record_predictions
from tljax.workdir import classifier_variables, state_at

sys.path.insert(0, str(REPO))  # the configs package

# The semi-supervised methods run end to end here; `fixmatch` and
# `pseudo_label` in their semi-supervised settings only briefly (their step
# is the domain-adaptation one, resumed and compared across devices in
# test_new_methods.py, plus one cross-entropy).
BRIEF = ["fixmatch", "pseudo_label", "source_only"]
# Noisy Student's round runs resumed (its teacher's predictions are made once,
# before step 0, and restored from the checkpoint after).
ROUNDS = ["noisy_student"]


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def ssl_data_dir(digits_data_dir):
  """The session's data dir with `digits_full` (the `ssl_digits` dataset) built."""
  open_domain("digits_full", "train", data_dir=digits_data_dir)
  return digits_data_dir


def ssl_config(name: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """`configs/<name>.py:ssl_digits` shrunk to a narrow network, batches of 16 and four steps."""
  config = importlib.import_module(f"configs.{name}").get_config("ssl_digits")
  config.data_dir = data_dir
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32
  config.batch_size = 16
  config.eval_batch_size = 128
  config.total_steps, config.eval_every, config.checkpoint_every, config.log_every = 4, 4, 2, 1
  config.keep_checkpoints = 3
  config.data.num_threads = 0
  for field, value in {"projection_dim": 16, "width": 32, "queue_size": 4}.items():
    if field in config.method:
      config.method[field] = value
  # Thresholds a barely trained network's predictions cross, so every branch runs.
  if "threshold" in config.method and name != "mean_teacher":
    config.method.threshold = 0.0 if name != "flexmatch" else 0.2
  set_fields(config, overrides)
  return config


# ----------------------------------------------------------------------------
# The protocol.
# ----------------------------------------------------------------------------


def _tllib_x_u_split(num_samples_per_class, num_classes, labels, seed):
  """TLlib's `x_u_split` (examples/semi_supervised_learning/image_classification/utils.py)."""
  labels = np.array(labels)
  assert num_samples_per_class * num_classes <= len(labels)
  random_state = np.random.RandomState(seed)
  labeled_idxes = []
  for i in range(num_classes):
    ith_class_idxes = np.where(labels == i)[0]
    ith_class_idxes = random_state.choice(ith_class_idxes, num_samples_per_class, False)
    labeled_idxes.extend(ith_class_idxes)
  unlabeled_idxes = [i for i in range(len(labels)) if i not in labeled_idxes]
  return labeled_idxes, unlabeled_idxes


@pytest.mark.parametrize("per_class,seed", [(4, 0), (4, 3), (25, 1)])
def test_labelled_subset_is_tllibs_x_u_split(ssl_data_dir, per_class, seed):
  domain = open_domain("digits_full", "train", data_dir=ssl_data_dir)
  labels = views.domain_labels(domain)
  labelled, unlabelled = task_lib.split_labelled(domain, per_class, seed)
  expected, expected_rest = _tllib_x_u_split(per_class, 10, labels, seed)
  assert len(labelled) == 10 * per_class and len(unlabelled) == len(expected_rest)
  image = lambda d, i: d.source[i]["image"].tobytes()
  assert ([image(labelled, i) for i in range(len(labelled))]
          == [image(domain, i) for i in sorted(expected)])
  assert ([image(unlabelled, i) for i in range(len(unlabelled))]
          == [image(domain, i) for i in expected_rest])
  assert np.bincount(views.domain_labels(labelled)).tolist() == [per_class] * 10


def test_a_class_with_too_few_examples_is_refused():
  labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
  with pytest.raises(ValueError, match="class 1 has only 3 examples; lower labels_per_class"):
    task_lib.stratified_count_indices(labels, 4, seed=0)


def test_each_seed_labels_its_own_examples_unless_the_draw_is_fixed(ssl_data_dir, tmp_path):
  def labelled_images(**fields):
    config = ssl_config("source_only", ssl_data_dir, **fields)
    domains = train.open_data(config, str(tmp_path))
    assert domains.target_eval.split == domains.source_eval.split == "test"
    return {domains.source_train.source[i]["image"].tobytes()
            for i in range(len(domains.source_train))}, domains

  seed0, domains = labelled_images(seed=0)
  seed1, _ = labelled_images(seed=1)
  assert len(seed0) == 40 and seed0 != seed1
  assert labelled_images(seed=0)[0] == seed0
  # An explicit draw seed decouples the draw from the run's seed, and leaves the seed alone.
  config = ssl_config("source_only", ssl_data_dir, seed=1)
  config.data.source_subset_seed = 0
  assert config.seed == 1
  assert labelled_images(seed=1, **{"data.source_subset_seed": 0})[0] == seed0
  # Labelled and unlabelled parts split the training split.
  unlabelled = {domains.target_train.source[i]["image"].tobytes()
                for i in range(len(domains.target_train))}
  assert not seed0 & unlabelled
  assert len(domains.target_train) + 40 == len(open_domain("digits_full", "train",
                                                           data_dir=ssl_data_dir))


def test_unlabelled_labels_never_reach_the_step(ssl_data_dir, tmp_path):
  config = ssl_config("flexmatch", ssl_data_dir)
  domains = train.open_data(config, str(tmp_path))
  method = create_method(config.method, num_classes=10)
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2],
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batches = train.train_batches(config, domains, method, 0, sharding)
  labelled = {domains.source_train.source[i]["image"].tobytes()
              for i in range(len(domains.source_train))}
  for _ in range(3):
    batch = next(batches)
    assert set(batch["target"]) == {"image", "image_strong", "index"}
    assert set(batch["source"]) == {"image", "image_strong", "label", "index", "domain"}
    # The unlabelled batch indexes the unlabelled split, none of whose images is labelled.
    index = np.asarray(batch["target"]["index"])
    assert index.max() < len(domains.target_train)
    assert not {domains.target_train.source[int(i)]["image"].tobytes() for i in index} & labelled


def test_a_view_without_its_preprocessing_is_refused_before_anything_is_written(
    ssl_data_dir, tmp_path):
  config = ssl_config("pi_model", ssl_data_dir)
  del config.data["second_preprocess"]
  with pytest.raises(ValueError, match="view 'image_second'.*config.data.second_preprocess"):
    train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert not os.path.exists(tmp_path / "run" / "config.json")


# ----------------------------------------------------------------------------
# Losses and schedules.
# ----------------------------------------------------------------------------


def test_flexmatch_thresholds_hand_worked():
  # Class counts 3, 1, 2, 0 (two unused): beta = 1, 1/3, 2/3, 0 and
  # M(beta) = beta / (2 - beta) = 1, 1/5, 1/2, 0.
  predictions = jnp.array([-1, -1, 0, 0, 0, 1, 2, 2])
  np.testing.assert_allclose(L.flexmatch_thresholds(predictions, 4, threshold=0.95, warmup=False),
                             [0.95, 0.19, 0.475, 0.0], rtol=1e-6)
  # Five unused and counts 2, 1: without warm-up beta = 1, 1/2 (M: 1, 1/3); with
  # it the unused count normalises: beta = 2/5, 1/5 (M: 1/4, 1/9).
  predictions = jnp.array([-1] * 5 + [0, 0, 1])
  np.testing.assert_allclose(L.flexmatch_thresholds(predictions, 3, threshold=0.9, warmup=False),
                             [0.9, 0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(L.flexmatch_thresholds(predictions, 3, threshold=0.9, warmup=True),
                             [0.225, 0.1, 0.0], rtol=1e-6)
  # Every example holding the same value (nothing confident yet, or one class
  # everywhere) reads as no status at all: TLlib's thresholds of 0.
  for same in ([-1] * 6, [2] * 6):
    assert np.all(np.asarray(L.flexmatch_thresholds(jnp.array(same), 3, threshold=0.95,
                                                    warmup=False)) == 0)


def test_flexmatch_records_the_last_selected_prediction_of_each_example():
  predictions = jnp.full((5,), -1, jnp.int32)
  # Example 3 twice: its second occurrence is not confident, so the first one's label stays.
  out = record_predictions(predictions, jnp.array([3, 1, 3, 0]), jnp.array([0, 1, 2, 2]),
                           jnp.array([True, True, False, False]))
  assert out.tolist() == [-1, 1, -1, 0, -1]
  out = record_predictions(out, jnp.array([3, 4, 3]), jnp.array([1, 2, 2]),
                           jnp.array([True, False, True]))
  assert out.tolist() == [-1, 1, -1, 2, -1]


def test_uda_consistency_masks_unconfident_examples_hand_worked():
  weak = np.log(np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.05, 0.9, 0.05],
                          [0.6, 0.2, 0.2]]))
  strong = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 3.0]])
  loss, mask = L.strong_weak_consistency(strong, weak, threshold=0.7, temperature=0.5)
  assert mask.tolist() == [1, 0, 1, 0]  # confidences 0.8, 0.5, 0.9, 0.6 against 0.7
  # KL(q || softmax(s / 0.5)) of rows 0 and 2, averaged over the two.
  q0, q2 = np.array([0.8, 0.1, 0.1]), np.array([0.05, 0.9, 0.05])
  p0 = np.exp([2.0, 0.0, -2.0]) / np.exp([2.0, 0.0, -2.0]).sum()
  p2 = np.exp([1.0, 1.0, 0.0]) / np.exp([1.0, 1.0, 0.0]).sum()
  kl = lambda q, p: float(np.sum(q * np.log(q / p)))
  np.testing.assert_allclose(loss, (kl(q0, p0) + kl(q2, p2)) / 2, rtol=1e-6)
  # The paper's variant sharpens the targets instead: q ~ q^(1/T), strong as is.
  sharp0 = q0 ** 2 / np.sum(q0 ** 2)
  loss, _ = L.strong_weak_consistency(strong[:1], weak[:1], threshold=0.7, temperature=0.5,
                                      sharpen_target=True)
  np.testing.assert_allclose(loss, kl(sharp0, _softmax(strong[0])), rtol=1e-6)
  # Nothing confident: 0 (divided by max(0, 1)); the weak view gets no gradient.
  assert float(L.strong_weak_consistency(strong, weak, threshold=0.95, temperature=0.5)[0]) == 0
  grad = jax.grad(lambda w: L.strong_weak_consistency(strong, w, threshold=0.7,
                                                      temperature=0.5)[0])(weak)
  assert np.all(np.asarray(grad) == 0)


def test_tsa_drops_labelled_examples_already_fitted():
  # Linear schedule halfway, 4 classes: eta = 0.5 (1 - 1/4) + 1/4 = 0.625.
  eta = L.tsa_threshold(50, 100, 4, "linear")
  np.testing.assert_allclose(eta, 0.625)
  np.testing.assert_allclose(L.tsa_threshold(0, 100, 4, "exp"), np.exp(-5) * 0.75 + 0.25)
  np.testing.assert_allclose(L.tsa_threshold(100, 100, 4, "log"), (1 - np.exp(-5)) * 0.75 + 0.25)
  logits = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2], [0.1, 0.6, 0.2, 0.1]]))
  labels = np.array([0, 0, 1])
  loss, kept = L.tsa_cross_entropy(logits, labels, eta)
  assert kept.tolist() == [0, 1, 1]  # 0.7 > 0.625 is dropped
  np.testing.assert_allclose(loss, -(np.log(0.4) + np.log(0.6)) / 2, rtol=1e-6)


def _tllib_sigmoid_warm_up(current_epoch, warm_up_epochs):
  """TLlib's `tllib.self_training.pi_model.sigmoid_warm_up`."""
  if warm_up_epochs == 0:
    return 1.0
  current_epoch = np.clip(current_epoch, 0.0, warm_up_epochs)
  process = 1.0 - current_epoch / warm_up_epochs
  return float(np.exp(-5.0 * process * process))


def test_sigmoid_warm_up_is_tllibs_per_epoch():
  # TLlib: 500 iterations per epoch, 10 epochs of warm-up; tljax counts steps.
  for step in (0, 1, 499, 500, 2600, 4999, 5000, 7000):
    np.testing.assert_allclose(L.sigmoid_warm_up(step, 5000, 500),
                               _tllib_sigmoid_warm_up(step // 500, 10), rtol=1e-6)
  assert float(L.sigmoid_warm_up(3, 0, 0)) == 1.0


def _tllib_enqueue(queue, pointers, keys, labels, queue_size):
  """TLlib's `SelfTuning._dequeue_and_enqueue`, called example by example."""
  queue, pointers = queue.copy(), pointers.copy()
  for key, label in zip(keys, labels):
    ptr = int(pointers[label])
    queue[:, ptr + label * queue_size] = key
    pointers[label] = (ptr + 1) % queue_size
  return queue, pointers


def test_enqueue_per_class_is_tllibs_loop():
  rng = np.random.default_rng(0)
  queue_size, num_classes, dim = 3, 4, 5
  queue = rng.normal(size=(dim, num_classes * queue_size))
  pointers = np.array([0, 2, 1, 0], np.int32)
  # Class 1 five times (more than the queue holds), class 3 never.
  labels = np.array([1, 0, 1, 1, 2, 1, 0, 1, 2])
  keys = rng.normal(size=(len(labels), dim))
  got_queue, got_pointers = L.enqueue_per_class(jnp.asarray(queue), jnp.asarray(pointers),
                                                jnp.asarray(keys), jnp.asarray(labels))
  want_queue, want_pointers = _tllib_enqueue(queue, pointers, keys, labels, queue_size)
  np.testing.assert_array_equal(got_pointers, want_pointers)
  np.testing.assert_allclose(got_queue, want_queue, rtol=0, atol=1e-6)


def test_pseudo_group_contrastive_is_tllibs_kl():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  num_classes, queue_size, dim, n, temperature = 3, 2, 4, 5, 0.5
  unit = lambda x: x / np.linalg.norm(x, axis=0 if x.shape[0] == dim else 1, keepdims=True)
  query, key = unit(rng.normal(size=(n, dim))), unit(rng.normal(size=(n, dim)))
  queue = unit(rng.normal(size=(dim, num_classes * queue_size)))
  labels = np.array([0, 2, 2, 1, 0])
  # TLlib's SelfTuning.forward: per example, positives then negatives, then
  # KLDivLoss(batchmean) against 1/(K+1) on the K+1 positives.
  q, k, cur = (torch.tensor(a, dtype=torch.float64) for a in (query, key, queue))
  logits_pos = torch.einsum("nl,nl->n", q, k).unsqueeze(-1)
  negatives, positives = [], []
  for i in range(n):
    c = int(labels[i])
    negatives.append(q[i:i + 1] @ torch.cat([cur[:, :c * queue_size],
                                             cur[:, (c + 1) * queue_size:]], dim=1))
    positives.append(q[i:i + 1] @ cur[:, c * queue_size:(c + 1) * queue_size])
  logits = torch.cat([logits_pos, torch.cat(positives), torch.cat(negatives)], dim=1)
  log_probs = torch.nn.LogSoftmax(dim=1)(logits / temperature)
  target = torch.zeros(n, 1 + queue_size * num_classes, dtype=torch.float64)
  target[:, :queue_size + 1] = 1.0 / (queue_size + 1)
  expected = torch.nn.KLDivLoss(reduction="batchmean")(log_probs, target).item()
  with jax.enable_x64(True):
    got = L.pseudo_group_contrastive(jnp.asarray(query), jnp.asarray(key), jnp.asarray(queue),
                                     jnp.asarray(labels), num_classes=num_classes,
                                     temperature=temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_worst_case_estimation_is_tllibs():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  y_l, y_l_adv, y_u, y_u_adv = (rng.normal(size=(6, 4)) * 2 for _ in range(4))
  t = lambda a: torch.tensor(a, dtype=torch.float64)
  # TLlib's WorstCaseEstimationLoss.forward with eta' = 2.
  shift_log = lambda x: torch.log(torch.clamp(x + 1e-6, max=1.0))
  expected = (2.0 * torch.nn.functional.cross_entropy(t(y_l_adv), t(y_l).max(dim=1)[1])
              + torch.nn.functional.nll_loss(shift_log(1.0 - torch.softmax(t(y_u_adv), dim=1)),
                                             t(y_u).max(dim=1)[1])).item()
  with jax.enable_x64(True):
    np.testing.assert_allclose(L.worst_case_estimation(y_l, y_l_adv, y_u, y_u_adv, eta_prime=2.0),
                               expected, rtol=1e-10)


# ----------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SSL_METHODS + BRIEF + ROUNDS)
def test_config_runs_on_the_ssl_tasks(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"configs/{name}.py:ssl_digits" in module.__doc__
  for task in ("ssl_digits", "ssl_synth"):
    config = module.get_config(task)
    assert config.data.labels_per_class == 4 and config.source == config.target
    method = create_method(config.method, num_classes=10)
    # TLlib's labelled strong-view term, except Self-Tuning's (two strong views).
    if name != "self_tuning":
      assert method.trade_off_cls_strong == 0.1 and method.source_views == ("image_strong",)


# ----------------------------------------------------------------------------
# Runs: short, resumed, one device.
# ----------------------------------------------------------------------------


class Runs:
  """The runs of each method, made once per module and in order of need."""

  def __init__(self, data_dir, root):
    self.data_dir, self.root = data_dir, root

  def _train(self, name, workdir, devices, **overrides):
    config = ssl_config(name, self.data_dir, **overrides)
    if name == "noisy_student":
      config.method.teacher = self.full("source_only")  # the ERM round
    return train.train_and_evaluate(config, workdir, devices=jax.devices()[:devices])

  @functools.cache
  def full(self, name) -> str:
    """Four steps on two devices, checkpoints at 2 and 4."""
    workdir = os.path.join(self.root, name, "full")
    self._train(name, workdir, 2)
    return workdir

  @functools.cache
  def resumed(self, name) -> str:
    """`full`'s workdir cut back to its checkpoint of step 2, resumed to step 4."""
    workdir = os.path.join(self.root, name, "resumed")
    shutil.copytree(self.full(name), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    os.remove(os.path.join(workdir, "results.json"))
    self._train(name, workdir, 2)
    return workdir

  @functools.cache
  def one_device(self, name) -> str:
    workdir = os.path.join(self.root, name, "one_device")
    self._train(name, workdir, 1, checkpoint_every=4)
    return workdir


@pytest.fixture(scope="module")
def runs(ssl_data_dir, tmp_path_factory):
  return Runs(ssl_data_dir, str(tmp_path_factory.mktemp("ssl_methods")))


@pytest.mark.parametrize("name", SSL_METHODS + BRIEF + ROUNDS)
def test_short_run_is_finite(name, runs):
  workdir = runs.full(name)
  lines = train_lines(workdir)
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for line in lines:
    assert all(np.isfinite(v) for k, v in line.items() if k != "kind"), line
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["method"] == name and results["step"] == 4
  assert results["target_eval"] == "digits_full:test"
  if name != "source_only":
    assert lines[-1]["transfer_loss"] != 0  # the unlabelled loss is live


@pytest.mark.parametrize("name", SSL_METHODS + ROUNDS)
def test_resumed_run_is_bit_identical(name, runs):
  full, step = state_at(runs.full(name), None)
  resumed, resumed_step = state_at(runs.resumed(name), None)
  assert step == resumed_step == 4
  for part in ("params", "model_state", "method_state", "opt_state"):
    a, b = flat(full[part]), flat(resumed[part])
    assert a.keys() == b.keys()
    for k in a:
      assert a[k].tobytes() == b[k].tobytes(), (part, k)
  timeless = lambda lines: [{k: v for k, v in l.items() if k != "steps_per_second"}
                            for l in lines]
  assert timeless(train_lines(runs.full(name))) == timeless(train_lines(runs.resumed(name)))


# Steps that take discrete decisions from a barely trained network's
# predictions (pseudo-labels, the queue's classes, FlexMatch's record) can part
# under another summation order (one device vs two); their first step, from
# the same state, must still agree.
DISCRETE = ("flexmatch", "self_tuning", "dst", "debiasmatch", "uda")


@pytest.mark.parametrize("name", SSL_METHODS)
def test_one_and_two_devices_agree(name, runs):
  first_lines = list(zip(train_lines(runs.full(name)), train_lines(runs.one_device(name))))
  assert first_lines
  if name in DISCRETE:
    x, y = first_lines[0]
    np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-5, atol=1e-6)
    return
  two, _ = state_at(runs.full(name), None)
  one, _ = state_at(runs.one_device(name), None)
  a, b = flat(two["params"]), flat(one["params"])
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
  for x, y in first_lines:
    np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-5, atol=1e-6)


def test_method_state_is_kept_and_moves(runs):
  """FlexMatch's record, DebiasMatch's mean prediction, Self-Tuning's queue and
  key encoder, the mean teacher's BatchNorm statistics (the student's)."""
  flex, _ = state_at(runs.full("flexmatch"), None)
  predictions = flex["method_state"]["predictions"]
  assert predictions.shape == (1198 - 40,) and (predictions >= 0).any() and (predictions == -1).any()
  debias, _ = state_at(runs.full("debiasmatch"), None)
  q_hat = debias["method_state"]["q_hat"]
  np.testing.assert_allclose(q_hat.sum(), 1.0, rtol=1e-5)
  assert not np.allclose(q_hat, 0.1)
  before, _ = state_at(runs.full("self_tuning"), 2)
  after, _ = state_at(runs.full("self_tuning"), 4)
  queue, old_queue = (s["model_state"]["queue"]["method"]["self_tuning"] for s in (after, before))
  assert queue["keys"].shape == (16, 10 * 4)
  assert not np.array_equal(queue["keys"], old_queue["keys"])
  np.testing.assert_allclose(np.linalg.norm(queue["keys"], axis=0), 1.0, rtol=1e-5)
  key = flat(after["method_state"]["key"]["params"])
  assert set(key) == set(flat(after["params"]))
  mean_teacher, _ = state_at(runs.full("mean_teacher"), None)
  # (XLA may compute the copied statistics in another fusion: equal to rounding.)
  for k, v in flat(mean_teacher["method_state"]["teacher"]["batch_stats"]).items():
    student = flat(mean_teacher["model_state"]["batch_stats"]["classifier"])[k]
    np.testing.assert_allclose(v, student, rtol=1e-6, atol=1e-7, err_msg=k)


def test_noisy_student_distils_its_teachers_predictions_on_the_unlabelled_split(runs, tmp_path):
  student, _ = state_at(runs.full("noisy_student"), None)
  teacher_logits = student["method_state"]["teacher_logits"]
  assert teacher_logits.shape == (1198 - 40, 10)
  # The ERM run's classifier, applied here to the first unlabelled images.
  config = ssl_config("noisy_student", runs.data_dir)
  domains = train.open_data(config, str(tmp_path))
  teacher, _ = classifier_variables(runs.full("source_only"))
  classifier = models.create_classifier(config.model, 10)
  evaluate = preprocess.from_config(config.data.eval_preprocess, config.data.image_size)
  images = np.stack([evaluate(domains.target_train.source[i], np.random.default_rng(0))["image"]
                     for i in range(6)])
  _, logits = classifier.apply(teacher, images, train=False)
  np.testing.assert_allclose(teacher_logits[:6], logits, rtol=1e-4, atol=1e-5)
