"""ADDA, MCD, BNM, DSAN, pseudo-label, mean teacher, FixMatch, SHOT, and the
label-set methods PADA, IWAN, OSBP and UAN (their references: test_label_sets.py).

Their losses against numpy references, the strong augmentations, SHOT's
clustering, and per method: a short run on the embedded digits task (finite
metrics), a resumed run bit-identical to an uninterrupted one, and one vs two
devices. The runs of one method share a module-level cache, and compilations
are shared through JAX's persistent cache (a resumed run compiles exactly
what the uninterrupted run did).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import shutil
import sys

import jax
import ml_collections
import numpy as np
import pytest
import scipy.spatial.distance

import tljax.losses as L
from conftest import NEW_METHODS, REPO, flat, set_fields, tiny_config, train_lines
from tljax import train
from tljax.data import pipeline, preprocess, registry, views
from tljax.methods import TrainState, create_method, method_names, terms
from tljax.methods.pada import PADA
from tljax.methods.shot import SHOT, cluster_pseudo_labels
from tljax.workdir import state_at

sys.path.insert(0, str(REPO))  # the configs package


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _random(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


# ----------------------------------------------------------------------------
# Losses against numpy.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 10), (6, 10)])
def test_bnm_matches_numpy_svd(shape):
  logits = _random(0, *shape, scale=2.0)
  singular_values = np.linalg.svd(_softmax(logits.astype(np.float64)), compute_uv=False)
  np.testing.assert_allclose(L.bnm(logits), -singular_values.mean(), rtol=1e-5)
  np.testing.assert_allclose(L.bnm(logits, normalisation="batch"),
                             -singular_values.sum() / shape[0], rtol=1e-5)
  # Rank-deficient batches (repeated rows, repeated singular values) keep a finite gradient.
  repeated = np.repeat(logits[:2], shape[0] // 2, axis=0)
  grad = jax.jit(jax.grad(L.bnm))(repeated)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  with pytest.raises(ValueError, match="normalisation"):
    L.bnm(logits, normalisation="rows")


def _np_lmmd(source, target, labels, probs, num_classes, kernel_mul=2.0, kernel_num=5):
  """The DSAN authors' LMMD, written with explicit loops over pairs."""
  z = np.concatenate([source, target]).astype(np.float64)
  n, n_s = len(z), len(source)
  distances = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(n)] for i in range(n)])
  bandwidth = distances.sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
  kernel = sum(np.exp(-distances / (bandwidth * kernel_mul ** q)) for q in range(kernel_num))
  onehot = np.eye(num_classes)[labels]
  source_sum = onehot.sum(0)
  source_w = onehot / np.where(source_sum == 0, 100, source_sum)
  target_sum = probs.sum(0)
  target_w = probs / np.where(target_sum == 0, 100, target_sum)
  shared = sorted(set(labels) & set(probs.argmax(1)))
  if not shared:
    return 0.0
  mask = np.zeros(num_classes)
  mask[shared] = 1
  source_w, target_w = source_w * mask, target_w * mask
  loss = 0.0
  for i in range(n_s):
    for j in range(n_s):
      loss += source_w[i] @ source_w[j] * kernel[i, j]
  for i in range(len(target)):
    for j in range(len(target)):
      loss += target_w[i] @ target_w[j] * kernel[n_s + i, n_s + j]
  for i in range(n_s):
    for j in range(len(target)):
      loss -= 2 * source_w[i] @ target_w[j] * kernel[i, n_s + j]
  return loss / len(shared)


def test_lmmd_matches_numpy_loop_reference():
  source, target = _random(1, 8, 5), _random(2, 7, 5, scale=1.5) + 0.5
  labels = np.array([0, 1, 1, 2, 0, 2, 1, 0])  # class 3 never in the source batch
  probs = _softmax(_random(3, 7, 4, scale=3.0))
  value = jax.jit(functools.partial(L.lmmd, num_classes=4))(source, target, labels, probs)
  np.testing.assert_allclose(value, _np_lmmd(source, target, labels, probs, 4), rtol=2e-5)
  # No gradient through the class weights (the target predictions).
  grad_probs = jax.grad(lambda p: L.lmmd(source, target, labels, p, num_classes=4))(probs)
  assert np.all(grad_probs == 0)
  # No class shared by the source labels and the target's arg-max: 0.
  disjoint = np.full(8, 3)
  assert float(L.lmmd(source, target, disjoint, probs * np.array([1, 1, 1, 0]),
                      num_classes=4)) == 0.0


def test_confidence_self_training_loss_masks_unconfident_examples():
  teacher = np.log(np.array([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2], [0.01, 0.01, 0.98],
                             [0.2, 0.7, 0.1]], np.float32))
  logits = _random(4, 4, 3)
  loss, mask, labels = L.confidence_self_training_loss(logits, teacher, threshold=0.9)
  np.testing.assert_array_equal(mask, [1, 0, 1, 0])
  np.testing.assert_array_equal(labels, [0, 0, 2, 1])
  ce = -np.log(_softmax(logits.astype(np.float64)))[np.arange(4), [0, 0, 2, 1]]
  np.testing.assert_allclose(loss, np.sum(ce * [1, 0, 1, 0]) / 4, rtol=1e-5)
  # The teacher's logits get no gradient.
  grad = jax.grad(lambda t: L.confidence_self_training_loss(logits, t, threshold=0.9)[0])(teacher)
  assert np.all(grad == 0)
  # Nothing confident: 0.
  assert float(L.confidence_self_training_loss(logits, teacher, threshold=0.99)[0]) == 0.0


def test_consistency_and_class_balance_match_numpy():
  p, q = _softmax(_random(5, 6, 4)), _softmax(_random(6, 6, 4))
  mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
  np.testing.assert_allclose(L.l2_consistency_loss(p, q, mask),
                             np.mean(np.sum((p - q) ** 2, 1) * mask), rtol=1e-5)
  mean, u = p.mean(0), 1 / 4
  np.testing.assert_allclose(L.class_balance_loss(p),
                             -np.mean(u * np.log(mean) + (1 - u) * np.log(1 - mean)), rtol=1e-5)
  # PyTorch's BCE clamps log(0) at -100.
  one_class = np.tile(np.eye(4)[:1], (3, 1)).astype(np.float32)
  np.testing.assert_allclose(L.class_balance_loss(one_class),
                             -np.mean([0.75 * -100.0] + [u * -100.0] * 3), rtol=1e-6)


def test_mcd_discrepancy_and_entropy_match_numpy():
  p1, p2 = _softmax(_random(7, 5, 3)), _softmax(_random(8, 5, 3))
  np.testing.assert_allclose(L.classifier_discrepancy(p1, p2), np.abs(p1 - p2).sum() / 15,
                             rtol=1e-6)
  np.testing.assert_allclose(L.mcd_entropy(p1), -np.mean(np.log(p1.mean(0) + 1e-6)), rtol=1e-6)


def test_information_maximization_matches_numpy():
  logits = _random(9, 8, 5, scale=2.0)
  p = _softmax(logits.astype(np.float64))
  mean_entropy = np.mean(-np.sum(p * np.log(p + 1e-5), 1))
  diversity = -np.sum(p.mean(0) * np.log(p.mean(0) + 1e-5))
  np.testing.assert_allclose(L.information_maximization(logits), mean_entropy - diversity,
                             rtol=1e-5)
  # Confident and diverse predictions score lower than uniform ones.
  assert float(L.information_maximization(10 * np.eye(5))) < float(
      L.information_maximization(np.zeros((5, 5))))


def test_inverted_label_loss_is_target_called_source():
  d = _random(10, 6)
  np.testing.assert_allclose(L.inverted_label_loss(d), np.mean(np.log1p(np.exp(-d))), rtol=1e-6)


# ----------------------------------------------------------------------------
# Strong augmentations.
# ----------------------------------------------------------------------------


def test_fixmatch_views_differ_and_are_reproducible(digits_data_dir):
  domain = registry.open_domain("digits_m", "train", data_dir=digits_data_dir)
  views = preprocess.multi_view({"image": preprocess.get_preprocess("digits", random_shift=2),
                                 "image_strong": preprocess.get_preprocess("digits_strong")})

  def batch(seed, step):
    batches = pipeline.train_batches(domain, global_batch_size=8, preprocess=views, seed=seed,
                                     start_step=step, num_threads=0)
    return next(batches)

  first, again, other = batch(1, 3), batch(1, 3), batch(2, 3)
  for key in ("image", "image_strong", "index"):
    assert first[key].tobytes() == again[key].tobytes()
  assert first["image"].shape == first["image_strong"].shape == (8, 28, 28, 3)
  assert np.abs(first["image"] - first["image_strong"]).mean() > 0.05
  assert not np.array_equal(first["image_strong"], other["image_strong"])
  assert not np.array_equal(first["image_strong"], batch(1, 4)["image_strong"])


def test_rand_augment_operations_match_timm():
  auto_augment = pytest.importorskip("timm.data.auto_augment")
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
  fill = (124, 116, 104)
  hparams = dict(translate_const=100, img_mean=fill, interpolation=Image.BILINEAR)
  for op in preprocess.RAND_AUGMENT_OPS:
    for magnitude in (3.0, 10.0):
      level_fn = auto_augment.LEVEL_TO_ARG[op]
      args = level_fn(magnitude, hparams) if level_fn else ()
      negate = bool(args) and op in ("Rotate", "ShearX", "ShearY", "TranslateXRel",
                                     "TranslateYRel") and args[0] < 0
      reference = auto_augment.NAME_TO_OP[op](image, *args, fillcolor=fill,
                                              resample=Image.BILINEAR)
      ours = preprocess.rand_augment_op(image, op, magnitude / 10, negate=negate, fill=fill)
      np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference), err_msg=op)


class _RecordedDraws:
  """A numpy generator that records what `preprocess.rand_augment` draws from it."""

  def __init__(self, seed: int):
    self.rng, self.choices, self.uniforms, self.normals = np.random.default_rng(seed), [], [], []

  def choice(self, n, size):
    self.choices.append(self.rng.choice(n, size=size))
    return self.choices[-1]

  def random(self):
    self.uniforms.append(self.rng.random())
    return self.uniforms[-1]

  def normal(self, loc, scale):
    self.normals.append(self.rng.normal(loc, scale))
    return self.normals[-1]


def test_rand_augment_matches_timm_draw_for_draw(monkeypatch):
  """FixMatch's strong view (TLlib: timm's `rand_augment_transform('rand-m10-n2-mstd2')`)
  given the same draws: timm's `RandAugment` fed, through its module-level
  generators, the operations, application coins, magnitudes and signs
  tljax's `rand_augment` drew, gives the same image."""
  auto_augment = pytest.importorskip("timm.data.auto_augment")
  import random  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
  fill = (124, 116, 104)
  timm_transform = auto_augment.rand_augment_transform(
      "rand-m10-n2-mstd2", {"translate_pct": 0.45, "img_mean": fill,
                            "interpolation": Image.BILINEAR})
  chosen_names, changed = set(), 0
  for seed in range(40):
    draws = _RecordedDraws(seed)
    ours = preprocess.rand_augment(image, draws, num_ops=2, magnitude=10.0, magnitude_std=2.0,
                                   prob=0.5, fill=fill)
    chosen = [timm_transform.ops[i] for i in draws.choices[0]]
    assert [op.name for op in chosen] == [preprocess.RAND_AUGMENT_OPS[i]
                                          for i in draws.choices[0]]
    uniforms, normals = list(draws.uniforms), list(draws.normals)
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: chosen)
    monkeypatch.setattr(random, "random", lambda: uniforms.pop(0))
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: normals.pop(0))
    theirs = timm_transform(image)
    monkeypatch.undo()
    assert not uniforms and not normals, "timm drew less than tljax did"
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=f"seed {seed}")
    chosen_names.update(op.name for op in chosen)
    changed += not np.array_equal(np.asarray(ours), np.asarray(image))
  # Not vacuous: most images changed, by most of the operations.
  assert changed >= 20 and len(chosen_names) >= 12, (changed, chosen_names)


def test_imagenet_strong_is_reproducible_and_strong():
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  pixels = (np.random.default_rng(1).random((90, 120, 3)) * 255).astype(np.uint8)
  encoded = io.BytesIO()
  Image.fromarray(pixels).save(encoded, "PNG")
  example = {"image": encoded.getvalue(), "label": 3}
  strong = preprocess.get_preprocess("imagenet_strong", size=48, resize=56, scale=(0.5, 1.0))
  weak = preprocess.get_preprocess("imagenet_train", size=48, resize=56, scale=(0.5, 1.0))
  a = strong(example, np.random.default_rng(7))["image"]
  assert a.shape == (48, 48, 3) and a.dtype == np.float32
  assert a.tobytes() == strong(example, np.random.default_rng(7))["image"].tobytes()
  different = [not np.array_equal(strong(example, np.random.default_rng(s))["image"],
                                  weak(example, np.random.default_rng(s))["image"])
               for s in range(8)]
  assert sum(different) >= 4  # each of the two operations applies with probability 0.5


# ----------------------------------------------------------------------------
# SHOT's clustering.
# ----------------------------------------------------------------------------


def _np_shot_labels(features, logits, rounds=2, threshold=0):
  """The SHOT authors' `obtain_label` (cosine distance), step by step."""
  probs = _softmax(np.asarray(logits, np.float64))
  predict = probs.argmax(1)
  z = np.concatenate([features, np.ones((len(features), 1))], 1).astype(np.float64)
  z = (z.T / np.linalg.norm(z, axis=1)).T
  num_classes = probs.shape[1]
  aff = probs
  for _ in range(rounds):
    initc = aff.T.dot(z)
    initc = initc / (1e-8 + aff.sum(axis=0)[:, None])
    cls_count = np.eye(num_classes)[predict].sum(axis=0)
    labelset = np.where(cls_count > threshold)[0]
    dd = scipy.spatial.distance.cdist(z, initc[labelset], "cosine")
    predict = labelset[dd.argmin(axis=1)]
    aff = np.eye(num_classes)[predict]
  return predict


def test_shot_clustering_matches_numpy_reference():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 6)) * 3
  truth = np.repeat(np.arange(4), 30)
  features = centres[truth] + rng.normal(size=(120, 6))
  # A poor classifier: right on 60% of the examples, never predicts class 3.
  logits = rng.normal(size=(120, 4)) * 0.5
  noisy = np.where(rng.random(120) < 0.6, truth, rng.integers(0, 3, 120))
  logits[np.arange(120), noisy] += 2.0
  logits[:, 3] -= 5.0
  labels = cluster_pseudo_labels(features, logits, rounds=2, min_count=0)
  np.testing.assert_array_equal(labels, _np_shot_labels(features, logits))
  assert np.mean(labels == truth) > np.mean(logits.argmax(1) == truth)
  np.testing.assert_array_equal(cluster_pseudo_labels(features, logits, rounds=1, min_count=0),
                                _np_shot_labels(features, logits, rounds=1))


# ----------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------


# The label-set methods' embedded tasks, and the class subsets of digits their
# short runs here take (`tljax.data.task.PRESETS`).
EMBEDDED_TASK = {"pada": "synth_partial", "iwan": "synth_partial", "osbp": "synth_open_set",
                 "uan": "synth_universal"}
LABEL_SETS = {"pada": "digits_partial", "iwan": "digits_partial", "osbp": "digits_open_set",
              "uan": "digits_universal"}


@pytest.mark.parametrize("name", NEW_METHODS)
def test_config_builds_its_method_for_both_tasks(name):
  assert name in method_names()
  module = importlib.import_module(f"configs.{name}")
  task = EMBEDDED_TASK.get(name, "digits")
  assert f"configs/{name}.py:{task}" in module.__doc__ and "office31" in module.__doc__
  for task in (task, "office31"):
    config = module.get_config(task)
    method = create_method(config.method, num_classes=31)
    # IWAN's config composes its term with TLlib's entropy term (iwan+entropy_min).
    assert config.method.name.split("+")[0] == name
    if isinstance(method, terms.TermsMethod):
      assert [term for term, _ in method.terms] == config.method.name.split("+")
    else:  # the config's settings reach the method's fields
      settings = {k: v for k, v in config.method.items() if k != "name"}
      assert {k: getattr(method, k) for k in settings} == settings


def test_combined_terms_build():
  combine = importlib.import_module("configs.combine")
  for names in ("cdan+bnm", "dann+pseudo_label", "dsan+bnm"):
    method = create_method(combine.get_config(f"{names},digits").method, num_classes=10)
    assert [n for n, _ in method.terms] == names.split("+")


def test_progressive_weights_follow_total_steps():
  for name, get in (("dsan", lambda c: c.method.trade_off_warmup),
                    ("shot", lambda c: c.schedule.gamma)):
    config = importlib.import_module(f"configs.{name}").get_config("digits")
    config.total_steps = 40
    assert get(config) == (40 if name == "dsan" else 10 / 40)


# ----------------------------------------------------------------------------
# Runs: short, resumed, one device.
# ----------------------------------------------------------------------------

# Short-run settings that reach every branch in four steps.
RUN_FIELDS = {
    "adda": {"pretrain_steps": 2},  # the resumed run crosses the switch to adversarial training
    "mcd": {"num_k": 2},
    "pseudo_label": {"threshold": 0.0},
    "mean_teacher": {"threshold": 0.0},
    "fixmatch": {"threshold": 0.0},
    "pada": {"update_every": 2},  # class weights recomputed before step 2 (and on resuming there)
}


def run_config(name: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """`configs/<name>.py:digits` shrunk to `tiny_config`'s network and four steps."""
  config = importlib.import_module(f"configs.{name}").get_config("digits")
  # Checkpoints at 2 (where `resumed` restarts) and 4; Mean Teacher's test reads step 3 too.
  tiny = tiny_config(data_dir, total_steps=4, eval_every=4,
                     checkpoint_every=1 if name == "mean_teacher" else 2, log_every=1)
  for key in ("data_dir", "batch_size", "eval_batch_size", "total_steps", "eval_every",
              "checkpoint_every", "log_every"):
    config[key] = tiny[key]
  config.keep_checkpoints = 3
  config.data.num_threads = 0
  config.model.backbone_kwargs.widths = (8, 8, 16)
  if config.model.bottleneck_dim:
    config.model.bottleneck_dim = 32
  if config.model.head_hidden:
    config.model.head_hidden = 32
  for fields in (config.method, *[v for v in config.method.values()
                                   if isinstance(v, ml_collections.ConfigDict)]):
    if "hidden_sizes" in fields:
      fields.hidden_sizes = (32, 32)
  config.method.update(RUN_FIELDS.get(name, {}))
  config.data.label_sets = LABEL_SETS.get(name, "")
  set_fields(config, overrides)
  return config


class _NoReads:
  """A source split that any read fails on (only its length is known)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    raise AssertionError("a source-free method read the source training split")

  get_batch = __getitems__ = __getitem__


class Runs:
  """The runs of each method, made once per module and in order of need."""

  def __init__(self, data_dir, root):
    self.data_dir, self.root = data_dir, root
    self.refreshes = {}  # SHOT's workdirs: (steps_per_target_epoch, [steps refreshed at])
    self.pada_predictions = {}  # PADA's workdirs: [(step, what predict returned)]

  def _train(self, name, workdir, devices, **overrides):
    config = run_config(name, self.data_dir, **overrides)
    if name == "pada":
      return self._train_pada(config, workdir, devices)
    if name != "shot":
      return train.train_and_evaluate(config, workdir, devices=jax.devices()[:devices])
    config.model.init = self.source_model()
    record = self.refreshes[workdir] = [None, []]
    interval, refresh = SHOT.refresh_interval, SHOT.refresh

    def recorded_interval(method, steps_per_target_epoch):
      record[0] = steps_per_target_epoch
      return interval(method, steps_per_target_epoch)

    def recorded_refresh(method, ctx, state, predict):
      record[1].append(int(state.step))
      return refresh(method, ctx, state, predict)

    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(train, "open_domain", self._without_source_reads(config))
      patch.setattr(SHOT, "refresh_interval", recorded_interval)
      patch.setattr(SHOT, "refresh", recorded_refresh)
      return train.train_and_evaluate(config, workdir, devices=jax.devices()[:devices])

  def _train_pada(self, config, workdir, devices):
    """PADA's run, recording what its refresh gets from the target split."""
    record = self.pada_predictions[workdir] = []
    refresh = PADA.refresh

    def recorded_refresh(method, ctx, state, predict):
      def recorded_predict(variables):
        outputs = predict(variables)
        record.append((int(state.step), outputs))
        return outputs
      return refresh(method, ctx, state, recorded_predict)

    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(PADA, "refresh", recorded_refresh)
      return train.train_and_evaluate(config, workdir, devices=jax.devices()[:devices])

  def _without_source_reads(self, config):
    def open_domain(name, split, **kwargs):
      if (name, split) == (config.source, config.source_split):
        target = registry.open_domain(config.target, config.target_split, **kwargs)
        size = len(registry.open_domain(name, split, **{**kwargs, "cache": False}))
        return dataclasses.replace(target, name=name, split=split, source=_NoReads(size))
      return registry.open_domain(name, split, **kwargs)
    return open_domain

  @functools.cache
  def source_model(self) -> str:
    workdir = os.path.join(self.root, "source_only")
    train.train_and_evaluate(run_config("source_only", self.data_dir, total_steps=2),
                             workdir, devices=jax.devices()[:2])
    return workdir

  @functools.cache
  def full(self, name) -> str:
    """Four steps on two devices, checkpoints at 2 and 4 (and 3: `run_config`)."""
    workdir = os.path.join(self.root, name, "full")
    self._train(name, workdir, 2)
    return workdir

  @functools.cache
  def resumed(self, name) -> str:
    """`full`'s workdir cut back to its checkpoint of step 2, resumed to step 4."""
    workdir = os.path.join(self.root, name, "resumed")
    shutil.copytree(self.full(name), workdir)
    for step in ("3", "4"):
      shutil.rmtree(os.path.join(workdir, "checkpoints", step), ignore_errors=True)
    os.remove(os.path.join(workdir, "results.json"))
    self._train(name, workdir, 2)
    return workdir

  @functools.cache
  def one_device(self, name) -> str:
    workdir = os.path.join(self.root, name, "one_device")
    self._train(name, workdir, 1, checkpoint_every=4)
    return workdir


@pytest.fixture(scope="module")
def runs(digits_data_dir, tmp_path_factory):
  return Runs(digits_data_dir, str(tmp_path_factory.mktemp("new_methods")))


@pytest.mark.parametrize("name", NEW_METHODS)
def test_short_run_is_finite(name, runs):
  workdir = runs.full(name)
  lines = train_lines(workdir)
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for line in lines:
    assert all(np.isfinite(v) for k, v in line.items() if k != "kind"), line
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["method"].split("+")[0] == name and results["step"] == 4
  # The accuracy is a count of hits over the evaluated examples, each counted
  # once (the split's size, read from the dataset, for the closed-set tasks).
  examples = results["target_report"]["num_examples"]
  hits = results["target_accuracy"] * examples
  assert hits == pytest.approx(round(hits), abs=1e-6), (hits, examples)
  if name not in LABEL_SETS:
    dataset, split = results["target_eval"].split(":")
    assert examples == len(registry.open_domain(dataset, split, data_dir=runs.data_dir))
  # The adaptation loss is live by the last step (DSAN's progressive weight is 0 at step 0).
  key = {"shot": "im_loss", "mcd": "classifier_discrepancy"}.get(name, "transfer_loss")
  assert lines[-1][key] != 0


@pytest.mark.parametrize("name", NEW_METHODS)
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


# Methods whose step takes discrete decisions from the predictions of a barely
# trained network (argmax pseudo-labels; DSAN's classes present in a batch):
# near-tied logits make those decisions flip under a different summation order
# (one device vs two), so later steps legitimately part. Their first step, made
# from the same initial state, must still agree.
DISCRETE_PSEUDO_LABELS = ("pseudo_label", "dsan")


@pytest.mark.parametrize("name", NEW_METHODS)
def test_one_and_two_devices_agree(name, runs):
  first_lines = list(zip(train_lines(runs.full(name)), train_lines(runs.one_device(name))))
  assert first_lines
  if name in DISCRETE_PSEUDO_LABELS:
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


# ----------------------------------------------------------------------------
# What each method may update.
# ----------------------------------------------------------------------------


def test_adda_freezes_the_source_classifier_and_trains_the_target_encoder(runs):
  before, _ = state_at(runs.full("adda"), 2)  # the end of pre-training
  after, _ = state_at(runs.full("adda"), 4)  # two adversarial steps later
  for source_before, source_after in (
      (before["params"]["classifier"], after["params"]["classifier"]),
      (before["model_state"]["batch_stats"]["classifier"],
       after["model_state"]["batch_stats"]["classifier"])):
    source_before, source_after = flat(source_before), flat(source_after)
    assert source_before and source_before.keys() == source_after.keys()
    for k in source_before:  # parameters and BatchNorm statistics, bitwise
      assert source_before[k].tobytes() == source_after[k].tobytes(), k
  target = after["params"]["method"]["target"]
  assert sorted(target) == ["backbone", "bottleneck"]  # the head is the source's
  source_encoder = flat({k: after["params"]["classifier"][k] for k in target})
  for k, v in flat(target).items():
    assert not np.array_equal(v, source_encoder[k]), k
  assert [l["pretraining"] for l in train_lines(runs.full("adda"))] == [1, 1, 0, 0]


def test_adda_paper_objective_runs(runs, digits_data_dir, tmp_path):
  config = run_config("adda", digits_data_dir, total_steps=3, eval_every=3, checkpoint_every=3)
  config.method.objective = "paper"
  config.model.init = runs.source_model()
  config.method.pretrain_steps = 0
  train.train_and_evaluate(config, str(tmp_path / "paper"), devices=jax.devices()[:1])
  lines = train_lines(str(tmp_path / "paper"))
  assert all(np.isfinite(l["domain_loss"]) and np.isfinite(l["transfer_loss"]) for l in lines)
  state, _ = state_at(str(tmp_path / "paper"), None)
  source, _ = state_at(runs.source_model(), None)
  for k, v in flat(source["params"]["classifier"]).items():
    assert v.tobytes() == flat(state["params"]["classifier"])[k].tobytes(), k


def test_mcd_phases_update_only_what_they_name(digits_data_dir):
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,))
  setup = train.build(run_config("mcd", digits_data_dir), 10, mesh, (28, 28, 3))
  rng = np.random.default_rng(0)
  image = lambda: rng.normal(size=(16, 28, 28, 3)).astype(np.float32)
  batch = {"source": {"image": image(), "label": rng.integers(0, 10, 16).astype(np.int32)},
           "target": {"image": image()}}
  groups = {"generator": "['classifier']['backbone']", "head": "['classifier']['head']",
            "f2": "['method']['f2']"}
  expected = {"step_a": {"generator", "head", "f2"}, "step_b": {"head", "f2"},
              "step_c": {"generator"}}
  before = flat(setup.state.params)

  @jax.jit
  def each_phase(state):  # from the same state; one compilation for the three
    return {phase: getattr(setup.method, phase)(setup.ctx, state, batch, jax.random.key(1))[0]
            for phase in expected}

  with jax.set_mesh(mesh):
    states = each_phase(setup.state)
  for phase, moved in expected.items():
    after = flat(states[phase].params)
    for group, prefix in groups.items():
      changed = [not np.array_equal(before[k], after[k]) for k in before if k.startswith(prefix)]
      assert changed and any(changed) == (group in moved), (phase, group)


def test_mean_teacher_is_an_ema_of_the_student(runs, digits_data_dir):
  config = run_config("mean_teacher", digits_data_dir)
  method = create_method(config.method, num_classes=10)
  decay = config.method.ema_decay
  before, _ = state_at(runs.full("mean_teacher"), 3)
  after, _ = state_at(runs.full("mean_teacher"), 4)
  teacher, new_teacher = before["method_state"]["teacher"], after["method_state"]["teacher"]
  student = flat(after["params"]["classifier"])
  for k, v in flat(new_teacher["params"]).items():
    np.testing.assert_allclose(v, decay * flat(teacher["params"])[k] + (1 - decay) * student[k],
                               rtol=1e-6, atol=1e-7)
  # Its BatchNorm statistics are its own pass's, neither the old ones nor the student's.
  stats, old_stats = flat(new_teacher["batch_stats"]), flat(teacher["batch_stats"])
  student_stats = flat(after["model_state"]["batch_stats"]["classifier"])
  assert stats and all(not np.array_equal(stats[k], old_stats[k]) for k in stats)
  assert all(not np.array_equal(stats[k], student_stats[k]) for k in stats)
  state = TrainState(**after)
  assert method.eval_variables(None, state, None)["params"] is state.params["classifier"]
  teacher_eval = dataclasses.replace(method, evaluate="teacher")
  assert teacher_eval.eval_variables(None, state, None) is state.method_state["teacher"]


def test_shot_never_reads_the_source_and_keeps_its_head(runs):
  # Every SHOT run here reads its source training split through `_NoReads`.
  workdir = runs.full("shot")
  state, _ = state_at(workdir, None)
  source, _ = state_at(runs.source_model(), None)
  head, source_head = flat(state["params"]["classifier"]["head"]), flat(
      source["params"]["classifier"]["head"])
  for k in source_head:
    assert head[k].tobytes() == source_head[k].tobytes(), k
  backbone = flat(state["params"]["classifier"]["backbone"])
  assert any(not np.array_equal(v, flat(source["params"]["classifier"]["backbone"])[k])
             for k, v in backbone.items())
  labels = state["method_state"]["pseudo_labels"]  # one per target example
  assert labels.shape == (598,) and labels.min() >= 0 and labels.max() < 10
  # Pseudo-labels are made before the first step of each pass over the 598 target
  # images (38 steps of 16); the resumed run (from step 2) keeps the checkpointed ones.
  assert runs.refreshes[workdir] == [38, [0]]
  assert runs.refreshes[runs.resumed("shot")] == [38, []]
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["initialised_from"].endswith("source_only@2")


def test_pada_recomputes_its_class_weights_during_the_run(runs):
  # Weights are 1 until the refresh before step 2 (update_every=2 here); the
  # checkpoint of step 2 is written before it.
  at_two, _ = state_at(runs.full("pada"), 2)
  at_four, _ = state_at(runs.full("pada"), 4)
  assert np.all(at_two["method_state"]["class_weights"] == 1.0)
  weights = np.asarray(at_four["method_state"]["class_weights"])
  assert weights.shape == (10,) and weights.max() == pytest.approx(1.0) and weights.min() < 1.0
  # The refresh predicted the target split once (before step 2): features and
  # logits of its examples, never their labels.
  [(step, outputs)] = runs.pada_predictions[runs.full("pada")]
  features, logits = outputs
  target = registry.open_domain("digits_m", "train", data_dir=runs.data_dir)
  shared = int(np.sum(views.domain_labels(target) < 5))  # the preset's target classes 0-4
  assert step == 2 and len(features) == len(logits) == shared
  np.testing.assert_allclose(weights, L.pada_class_weights(logits, temperature=0.1), rtol=1e-5)
