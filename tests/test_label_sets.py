"""Partial, open-set and universal domain adaptation: PADA, IWAN, OSBP, UAN.

Their weights and losses against PyTorch restatements of the reference code
(TLlib's `tllib/reweight/pada.py`, `iwan.py`, `tllib/alignment/osbp.py`, and
the UAN authors' `lib.py` / `main.py` / `net.py`; the pieces
`tests/torch_reference_methods.py` keeps for their 30-step trajectories in
`tests/test_trajectory.py`); each method's first step (loss, parameters and
BatchNorm statistics after one SGD update) on feature vectors, from a state
the trajectories do not reach (PADA's given class weights, UAN's reversal at
call 5000), and the rejection rules of OSBP and UAN; the embedded tasks and
own folders whose class lists differ.

The first-step comparisons run both sides in float64 on feature vectors (the
`identity` backbone, so the network is bottleneck + head + the method's
networks), with dropout off on both sides (a mask cannot be drawn alike) and
plain SGD, so the parameters after the update are the initial ones minus the
learning rate times each side's gradient.
"""

import importlib
import sys

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest

import tljax.losses as L
from conftest import REPO, tiny_config
from tljax import evaluation, train
from tljax.data import task as task_lib
from tljax.data import views
from tljax.methods import create_method

sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch", reason="the references are restated in PyTorch")
tnn, F = torch.nn, torch.nn.functional
from benchmarks.torch_reference import _ReverseGradient  # noqa: E402  pylint: disable=g-import-not-at-top,line-too-long
import torch_reference_methods as methods_torch  # noqa: E402  pylint: disable=g-import-not-at-top

_Reverse = _ReverseGradient  # TLlib's `GradientReverseFunction` (and the UAN authors' layer)
_bce = methods_torch.binary_cross_entropy
_class_weight = methods_torch.pada_class_weight  # TLlib's `ClassWeightModule`
# The UAN authors' `get_source_share_weight` and `normalize_weight`.
_share_weight = methods_torch.uan_source_share_weight
_normalize = methods_torch.uan_normalize_weight


def _random(seed, *shape, scale=1.0):
  return scale * np.random.default_rng(seed).standard_normal(shape)


def _t(x):
  return torch.tensor(np.asarray(x, np.float64))


# ----------------------------------------------------------------------------
# Weights and losses against the references, on fixed inputs.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_pada_class_weights_match_tllib(temperature):
  logits = _random(0, 40, 6, scale=2.0)
  logits[:, 4:] -= 3.0  # two classes the target rarely predicts
  ours = np.asarray(L.pada_class_weights(logits, temperature=temperature))
  np.testing.assert_allclose(ours, _class_weight(_t(logits), temperature).numpy(),
                             rtol=1e-5)
  assert ours.max() == pytest.approx(1.0) and ours[4:].max() < ours[:4].min()


def test_pada_weighted_losses_match_pytorch():
  logits, labels = _random(1, 12, 5), np.random.default_rng(2).integers(0, 5, 12)
  class_weights = np.array([1.0, 0.2, 0.7, 0.05, 0.4])
  ours = L.class_weighted_cross_entropy(logits, labels, class_weights)
  theirs = F.cross_entropy(_t(logits), torch.tensor(labels), weight=_t(class_weights))
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)
  # TLlib's get_class_weight_for_adversarial_loss.
  w_s, w_t = L.pada_adversarial_weights(class_weights, labels)
  reference_source = _t(class_weights)[torch.tensor(labels)]
  np.testing.assert_allclose(w_s, reference_source.numpy(), rtol=1e-6)
  np.testing.assert_allclose(w_t, (torch.ones_like(reference_source)
                                   * reference_source.mean()).numpy(), rtol=1e-6)
  # The weights are constants: no gradient reaches them.
  grad = jax.grad(lambda w: L.class_weighted_cross_entropy(logits, labels, w))(class_weights)
  assert np.all(np.asarray(grad) == 0)


def test_iwan_importance_weights_match_tllib():
  d_logits = _random(3, 16, scale=2.0)
  # TLlib's ImportanceWeightModule.get_importance_weight on D's (sigmoid) output.
  probability = torch.sigmoid(_t(d_logits))
  weight = 1.0 - probability
  weight = (weight / (weight.mean() + 1e-5)).detach()
  np.testing.assert_allclose(L.iwan_importance_weights(d_logits), weight.numpy(), rtol=1e-5)
  # A source example the discriminator takes for target (low D) weighs more.
  ours = np.asarray(L.iwan_importance_weights(d_logits))
  assert ours[np.argmin(d_logits)] == ours.max()


@pytest.mark.parametrize("domain,temperature", [("source", 10.0), ("target", 1.0)])
def test_uan_transferability_matches_the_authors_code(domain, temperature):
  d_logits, logits = _random(4, 10, scale=1.5), _random(5, 10, 7, scale=3.0)
  d_prob = torch.sigmoid(_t(d_logits)).view(-1, 1)
  reference = _share_weight(d_prob, _t(logits), 1.0, temperature)
  if domain == "target":  # get_target_share_weight
    reference = -reference
  ours = L.uan_transferability(d_logits, logits, domain=domain, class_temperature=temperature)
  np.testing.assert_allclose(ours, reference.numpy()[:, 0], rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(L.uan_normalize(ours),
                             _normalize(reference).numpy()[:, 0], rtol=1e-6)


def test_unknown_class_bce_matches_tllib():
  logits = _random(6, 9, 5, scale=2.0)
  # TLlib's UnknownClassBinaryCrossEntropy(t=0.5).forward.
  y, t = _t(logits), 0.5
  unknown_class_prob = F.softmax(y, dim=1)[:, -1].contiguous().view(-1, 1)
  known_class_prob = 1. - unknown_class_prob
  unknown_target = torch.ones((y.size(0), 1), dtype=y.dtype) * t
  known_target = 1. - unknown_target
  reference = (-torch.mean(unknown_target * torch.log(unknown_class_prob + 1e-6))
               - torch.mean(known_target * torch.log(known_class_prob + 1e-6)))
  np.testing.assert_allclose(L.unknown_class_bce(logits, t=t), reference.numpy(), rtol=1e-6)
  # At probability t on unknown the loss is smallest.
  at_boundary = np.array([[0.0, 0.0, np.log(2.0)]])  # softmax -> (0.25, 0.25, 0.5)
  assert float(L.unknown_class_bce(at_boundary)) < float(L.unknown_class_bce(at_boundary * 3))


def test_universal_measures_leave_out_source_private_classes_by_hand():
  # Known classes 0, 1, 2; class 2 is source-private (no target example), 3 is
  # unknown. Class 0: 2 of 4 right; class 1: 3 of 3; unknown: 1 of 3 rejected.
  # Predicting the private class 2 is simply wrong; it has no recall of its own.
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 3, 3, 3])
  predicted = np.array([0, 0, 2, 3, 1, 1, 1, 3, 2, 0])
  report = evaluation.open_set_report(predicted, labels, num_known=3)
  assert report["os_star"] == pytest.approx((2 / 4 + 3 / 3) / 2)  # 0.75, class 2 left out
  assert report["unk"] == pytest.approx(1 / 3)
  assert report["os"] == pytest.approx((2 / 4 + 3 / 3 + 1 / 3) / 3)
  assert report["h_score"] == pytest.approx(2 * 0.75 * (1 / 3) / (0.75 + 1 / 3))  # 0.4615
  assert report["per_class_accuracy"][2] is None


# ----------------------------------------------------------------------------
# First steps against the references.
# ----------------------------------------------------------------------------

INPUT = 6  # feature-vector "images" (identity backbone)
WIDTH = 8  # bottleneck
HIDDEN = 10  # discriminators
BATCH = 8
LR = 0.5  # plain SGD: large, so that every parameter visibly moves


@pytest.fixture(scope="module", autouse=True)
def _float64():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  with jax.enable_x64(True):
    yield
  torch.set_num_threads(threads)


def _config(module: str, **model) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{module}").get_config("digits")
  config.model.name = "identity"
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  config.model.dtype = "float64"
  config.model.bottleneck_dim = WIDTH
  config.model.bottleneck_dropout = 0.0
  config.model.update(model)
  config.batch_size = BATCH
  config.optimizer.update(learning_rate=LR, momentum=0.0, nesterov=False, weight_decay=0.0)
  config.schedule.name = "constant"
  return config


def _setup(config, labels: task_lib.LabelSpace):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  return train.build(config, labels.num_outputs, mesh, (INPUT,), labels=labels), mesh


def _batch(num_known: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"source": {"image": rng.standard_normal((BATCH, INPUT)),
                     "label": np.arange(BATCH, dtype=np.int32) % num_known},
          "target": {"image": 1.5 * rng.standard_normal((BATCH, INPUT)) + 0.5}}


def _one_step(setup, mesh, batch, state=None):
  """`(state before, state after, loss)` of one tljax step."""
  state = setup.state if state is None else state
  before = jax.device_get(state)
  with jax.set_mesh(mesh):
    after, metrics = setup.train_step(state, jax.tree.map(jnp.asarray, batch))
  return before, jax.device_get(after), float(metrics["loss"])


def _flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _torch_layers(state) -> dict[str, "tnn.Module"]:
  """Every Dense (a `kernel`) and BatchNorm (a `scale`) of a tljax state as a
  PyTorch layer with the same values, keyed by module path."""
  params, stats = _flat(state.params), _flat(state.model_state.get("batch_stats", {}))
  layers = {}
  for name in sorted({k.rsplit("/", 1)[0] for k in params}):
    if f"{name}/kernel" in params:
      kernel = params[f"{name}/kernel"]
      layer = tnn.Linear(*kernel.shape).double()
      layer.weight.data, layer.bias.data = _t(kernel.T), _t(params[f"{name}/bias"])
    else:
      layer = tnn.BatchNorm1d(params[f"{name}/scale"].shape[0]).double()
      layer.weight.data, layer.bias.data = _t(params[f"{name}/scale"]), _t(params[f"{name}/bias"])
      layer.running_mean.data, layer.running_var.data = _t(stats[f"{name}/mean"]), _t(
          stats[f"{name}/var"])
    layers[name] = layer
  return layers


def _sgd_step(layers, loss):
  parameters = [p for layer in layers.values() for p in layer.parameters()]
  optimizer = torch.optim.SGD(parameters, lr=LR)
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()


def _assert_same(after, layers, loss, reference_loss):
  np.testing.assert_allclose(loss, float(reference_loss.detach()), rtol=1e-9)
  params, stats = _flat(after.params), _flat(after.model_state.get("batch_stats", {}))
  assert {k.rsplit("/", 1)[0] for k in params} == set(layers)
  for name, layer in layers.items():
    if isinstance(layer, tnn.Linear):
      pairs = [("kernel", layer.weight.detach().numpy().T), ("bias", layer.bias)]
    else:
      pairs = [("scale", layer.weight), ("bias", layer.bias)]
      pairs += [(f"stats:{k}", v) for k, v in (("mean", layer.running_mean),
                                               ("var", layer.running_var))]
    for leaf, reference in pairs:
      ours = (stats if leaf.startswith("stats:") else params)[f"{name}/{leaf.split(':')[-1]}"]
      reference = reference.detach().numpy() if torch.is_tensor(reference) else reference
      np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12, err_msg=f"{name}/{leaf}")


def _assert_every_layer_moved(before, after):
  """Not vacuous: every layer changed in the update (a bias right before a
  BatchNorm has no gradient, so a layer's weights may move alone)."""
  old, new = _flat(before.params), _flat(after.params)
  layers = {k.rsplit("/", 1)[0] for k in old}
  moved = {k.rsplit("/", 1)[0] for k in old if not np.array_equal(old[k], new[k])}
  assert moved == layers, sorted(layers - moved)


def _warm_start(step, alpha, max_steps):
  """TLlib's `WarmStartGradientReverseLayer` coefficient (lo 0, hi 1); the UAN
  authors' `aToBSheduler(step, 0, 1, gamma, max_iter)` is the same formula."""
  return float(2.0 / (1.0 + np.exp(-alpha * step / max_steps)) - 1.0)


def _bottleneck(layers, x, blocks=1, norm=True, relu=True):
  for block in range(blocks):
    suffix = str(block) if block else ""
    x = layers[f"classifier/bottleneck/linear{suffix}"](x)
    if norm:
      x = layers[f"classifier/bottleneck/bn{suffix}"](x)
    if relu:
      x = F.relu(x)
  return x


def _discriminator(layers, owner, x, batch_norm, sigmoid=True):
  """TLlib's `DomainDiscriminator` (with `batch_norm` False and dropout 0, also
  the UAN authors' `AdversarialNetwork`): probabilities of 'source'."""
  for i in range(2):
    x = layers[f"{owner}/linear{i}"](x)
    if batch_norm:
      x = layers[f"{owner}/bn{i}"](x)
    x = F.relu(x)
  x = layers[f"{owner}/output"](x)
  return torch.sigmoid(x) if sigmoid else x


def test_osbp_first_step_matches_tllib():
  labels = task_lib.label_space("0123", "012345", setting="open_set", source="s", target="t")
  config = _config("osbp")
  assert config.model.bottleneck_layers == 2
  setup, mesh = _setup(config, labels)
  batch = _batch(labels.num_known)
  before, after, loss = _one_step(setup, mesh, batch)

  layers = _torch_layers(before)
  for layer in layers.values():
    layer.train()

  def model(x, grad_reverse):  # TLlib's osbp.ImageClassifier.forward
    features = _bottleneck(layers, x, blocks=2)
    if grad_reverse:
      features = _Reverse.apply(features, 1.0)
    return layers["classifier/head"](features)

  y_s = model(_t(batch["source"]["image"]), grad_reverse=False)
  y_t = model(_t(batch["target"]["image"]), grad_reverse=True)
  softmax_output = F.softmax(y_t, dim=1)
  unknown = softmax_output[:, -1].view(-1, 1)
  trans_loss = -torch.mean(0.5 * torch.log(unknown + 1e-6)) - torch.mean(
      0.5 * torch.log(1. - unknown + 1e-6))
  reference = F.cross_entropy(y_s, torch.tensor(batch["source"]["label"]).long()) + trans_loss
  _sgd_step(layers, reference)
  _assert_same(after, layers, loss, reference)
  _assert_every_layer_moved(before, after)
  assert labels.num_outputs == 5  # 4 known classes and unknown
  pred = setup.predict_labels(after.variables, jnp.zeros((3, WIDTH)),
                              jnp.asarray([[0., 2., 0., 0., 1.], [0., 0., 0., 0., 3.],
                                           [0.2, 0.1, 0., 0., 0.]]), 0.8)
  np.testing.assert_array_equal(pred, [1, 4, 0])  # arg-max over the 5 outputs


def test_uan_first_step_matches_the_authors_code():
  labels = task_lib.label_space("0123456", "3456789", setting="universal", source="s",
                                target="t")
  # The authors' classifier on Office-31: a linear bottleneck.
  config = _config("uan", bottleneck_norm=False, bottleneck_relu=False)
  config.method.update(hidden_sizes=(HIDDEN, HIDDEN), dropout=0.0)
  setup, mesh = _setup(config, labels)
  batch = _batch(labels.num_known, seed=1)
  step = 2500  # the reversal coefficient of calls 5000 (source) and 5001 (target)
  state = setup.state.replace(step=jnp.asarray(step, setup.state.step.dtype))
  before, after, loss = _one_step(setup, mesh, batch, state)

  layers = _torch_layers(before)
  x_s, x_t = _t(batch["source"]["image"]), _t(batch["target"]["image"])
  feature_source, feature_target = _bottleneck(layers, x_s, norm=False, relu=False), _bottleneck(
      layers, x_t, norm=False, relu=False)
  fc2_s, fc2_t = layers["classifier/head"](feature_source), layers["classifier/head"](
      feature_target)
  predict_prob_source = F.softmax(fc2_s, dim=-1)
  coeff = lambda call: _warm_start(call, 10.0, 10000)
  d_s = _discriminator(layers, "method/discriminator",
                       _Reverse.apply(feature_source, coeff(2 * step)), False)
  d_t = _discriminator(layers, "method/discriminator",
                       _Reverse.apply(feature_target, coeff(2 * step + 1)), False)
  d_s_sep = _discriminator(layers, "method/discriminator_separate", feature_source.detach(), False)
  d_t_sep = _discriminator(layers, "method/discriminator_separate", feature_target.detach(), False)
  source_share_weight = _normalize(
      _share_weight(d_s_sep, fc2_s, domain_temperature=1.0, class_temperature=10.0))
  target_share_weight = _normalize(
      -_share_weight(d_t_sep, fc2_t, domain_temperature=1.0, class_temperature=1.0))
  adv_loss = torch.mean(source_share_weight * tnn.BCELoss(reduction="none")(
      d_s, torch.ones_like(d_s)), dim=0, keepdim=True)
  adv_loss = adv_loss + torch.mean(target_share_weight * tnn.BCELoss(reduction="none")(
      d_t, torch.zeros_like(d_t)), dim=0, keepdim=True)
  adv_loss_separate = _bce(d_s_sep, 1) + _bce(d_t_sep, 0)
  ce = tnn.CrossEntropyLoss()(predict_prob_source, torch.tensor(batch["source"]["label"]).long())
  reference = (ce + adv_loss + adv_loss_separate).sum()
  _sgd_step(layers, reference)
  _assert_same(after, layers, loss, reference)
  _assert_every_layer_moved(before, after)

  # The authors' test: transferability below w0 = -0.5 is unknown.
  features, logits = _random(7, 6, WIDTH), _random(8, 6, 7, scale=3.0)
  logits[0] = 0.0  # uniform prediction: normalised entropy 1, w_t = D' - 1 < -0.5 unless D' > 0.5
  ours = np.asarray(setup.predict_labels(after.variables, jnp.asarray(features),
                                         jnp.asarray(logits), 0.8))
  with torch.no_grad():
    domain_prob = _discriminator(_torch_layers(after), "method/discriminator_separate",
                                 _t(features), False)
    target_share_weight = -_share_weight(domain_prob, _t(logits), 1.0, 1.0)
  outlier = target_share_weight.numpy()[:, 0] < -0.5
  np.testing.assert_array_equal(ours, np.where(outlier, labels.unknown_label,
                                               logits.argmax(1)))
  assert outlier.any() and not outlier.all()


def test_pada_weighted_step_matches_tllib():
  labels = task_lib.label_space("01234", "012", setting="partial", source="s", target="t")
  config = _config("pada")
  config.method.update(hidden_sizes=(HIDDEN, HIDDEN), grl_max_steps=10)
  setup, mesh = _setup(config, labels)
  batch = _batch(labels.num_known, seed=2)
  class_weight = np.array([1.0, 0.6, 0.8, 0.05, 0.1])
  step = 7
  state = setup.state.replace(step=jnp.asarray(step, setup.state.step.dtype),
                              method_state={"class_weights": jnp.asarray(class_weight)})
  before, after, loss = _one_step(setup, mesh, batch, state)

  layers = _torch_layers(before)
  x = torch.cat((_t(batch["source"]["image"]), _t(batch["target"]["image"])), dim=0)
  f = _bottleneck(layers, x)
  y = layers["classifier/head"](f)
  y_s, _ = y.chunk(2, dim=0)
  f_s, f_t = f.chunk(2, dim=0)
  labels_s = torch.tensor(batch["source"]["label"]).long()
  cls_loss = F.cross_entropy(y_s, labels_s, _t(class_weight))
  w_s = _t(class_weight)[labels_s]
  w_t = torch.ones_like(w_s) * w_s.mean()
  d = _discriminator(layers, "method/discriminator",
                     _Reverse.apply(torch.cat((f_s, f_t)), _warm_start(step, 1.0, 10)), True)
  d_s, d_t = d.chunk(2, dim=0)
  transfer_loss = 0.5 * (_bce(d_s, 1, w_s.view_as(d_s)) + _bce(d_t, 0, w_t.view_as(d_t)))
  reference = cls_loss + transfer_loss * 1.0
  _sgd_step(layers, reference)
  _assert_same(after, layers, loss, reference)
  _assert_every_layer_moved(before, after)


def test_iwan_first_step_matches_tllib():
  labels = task_lib.label_space("01234", "012", setting="partial", source="s", target="t")
  config = _config("iwan")
  config.method.iwan.update(hidden_sizes=(HIDDEN, HIDDEN), dropout=0.0, grl_max_steps=10)
  setup, mesh = _setup(config, labels)
  batch = _batch(labels.num_known, seed=3)
  step = 4
  state = setup.state.replace(step=jnp.asarray(step, setup.state.step.dtype))
  before, after, loss = _one_step(setup, mesh, batch, state)

  layers = _torch_layers(before)
  x = torch.cat((_t(batch["source"]["image"]), _t(batch["target"]["image"])), dim=0)
  f = _bottleneck(layers, x)
  y = layers["classifier/head"](f)
  y_s, y_t = y.chunk(2, dim=0)
  f_s, f_t = f.chunk(2, dim=0)
  cls_loss = F.cross_entropy(y_s, torch.tensor(batch["source"]["label"]).long())
  coeff = _warm_start(step, 1.0, 10)
  D = lambda z: _discriminator(layers, "method/iwan/weight_discriminator", z, False)
  D_0 = lambda z: _discriminator(layers, "method/iwan/discriminator", z, False)
  d = D(_Reverse.apply(torch.cat((f_s.detach(), f_t.detach())), coeff))
  adv_loss_D = 0.5 * (_bce(d[:BATCH], 1) + _bce(d[BATCH:], 0))
  weight = 1. - D(f_s)
  w_s = (weight / (weight.mean() + 1e-5)).detach()
  d0 = D_0(_Reverse.apply(torch.cat((f_s, f_t)), coeff))
  adv_loss_D_0 = 0.5 * (_bce(d0[:BATCH], 1, w_s.view_as(d0[:BATCH])) + _bce(d0[BATCH:], 0))
  p_t = F.softmax(y_t, dim=1)
  entropy_loss = torch.mean(torch.sum(-p_t * torch.log(p_t + 1e-5), dim=1))
  reference = cls_loss + 1.5 * 3.0 * adv_loss_D + 3.0 * adv_loss_D_0 + 0.1 * entropy_loss
  _sgd_step(layers, reference)
  _assert_same(after, layers, loss, reference)
  _assert_every_layer_moved(before, after)


# ----------------------------------------------------------------------------
# PADA's refresh.
# ----------------------------------------------------------------------------


def test_pada_refresh_keeps_ones_at_step_0_then_averages_target_predictions():
  labels = task_lib.label_space("01234", "012", setting="partial", source="s", target="t")
  config = _config("pada")
  config.method.hidden_sizes = (HIDDEN, HIDDEN)
  setup, _ = _setup(config, labels)
  method = setup.method
  assert method.refresh_interval(7) == 500  # every `update_every` steps, not per target epoch
  logits = _random(9, 30, 5, scale=2.0)
  calls = []

  def predict(variables):
    calls.append(variables)
    return np.zeros((30, WIDTH)), logits  # features and logits only: no target labels

  state = method.refresh(setup.ctx, setup.state, predict)
  assert not calls and np.all(np.asarray(state.method_state["class_weights"]) == 1.0)
  later = setup.state.replace(step=jnp.asarray(500, setup.state.step.dtype))
  refreshed = method.refresh(setup.ctx, later, predict)
  np.testing.assert_allclose(refreshed.method_state["class_weights"],
                             _class_weight(_t(logits), 0.1).numpy(), rtol=1e-5)
  assert set(calls[0]) <= {"params", "batch_stats"} and "method" not in calls[0]["params"]


# ----------------------------------------------------------------------------
# Embedded tasks and own folders.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("module,task,setting", [
    ("pada", "synth_partial", "partial"), ("iwan", "synth_partial", "partial"),
    ("osbp", "synth_open_set", "open_set"), ("uan", "synth_universal", "universal"),
    ("source_only", "synth_open_set", "open_set"), ("dann", "synth_partial", "partial")])
def test_each_method_config_names_its_task_and_office31_protocol(module, task, setting):
  config_module = importlib.import_module(f"configs.{module}")
  config = config_module.get_config(task)
  preset = task_lib.preset(config.data.label_sets)
  assert preset.setting == setting and config.source == "synth_digits"
  assert create_method(config.method, num_classes=10).settings in (None, ) or (
      setting in create_method(config.method, num_classes=10).settings)
  if module in ("pada", "iwan", "osbp", "uan"):
    assert f"configs/{module}.py:{task}" in config_module.__doc__
    office = config_module.get_config("office31")
    assert task_lib.preset(office.data.label_sets).setting == setting
    assert office.model.name == "resnet50"


def _save_image(path, rng):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path, "PNG")


def _folders(root, source_classes, target_classes):
  rng = np.random.default_rng(0)
  for domain, classes in (("catalogue", source_classes), ("photos", target_classes)):
    for name in classes:
      for k in range(4):
        _save_image(root / domain / name / f"{k}.png", rng)
  return f"image_folder:{root / 'catalogue'}", f"image_folder:{root / 'photos'}"


@pytest.mark.parametrize("setting,target_classes", [
    ("partial", ("cat", "dog")), ("open_set", ("cat", "dog", "cow", "fox", "owl"))])
def test_own_folders_with_other_classes_run_with_only_the_setting_declared(
    tmp_path, setting, target_classes):
  source, target = _folders(tmp_path, ("cat", "dog", "cow"), target_classes)
  config = tiny_config(str(tmp_path / "tfds"), source=source, target=target,
                       eval_source_split="train", eval_target_split="train",
                       source_val_split="", total_steps=2, eval_every=2, checkpoint_every=2,
                       batch_size=8)
  # Undeclared: one line naming the setting to choose, before anything is written.
  with pytest.raises(ValueError, match=f"--config.setting={setting}") as error:
    train.train_and_evaluate(config, str(tmp_path / "undeclared"), devices=jax.devices()[:1])
  assert "\n" not in str(error.value)
  assert not (tmp_path / "undeclared" / "config.json").exists()
  config.setting = setting
  results = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert results["task"]["setting"] == setting
  assert results["task"]["labels"] == ["cat", "cow", "dog"]
  report = results["target_report"]
  if setting == "partial":
    assert results["primary_metric"]["name"] == "target_accuracy"
    assert results["task"]["target_classes"] == ["cat", "dog"] and report["num_examples"] == 8
  else:
    # fox and owl are one unknown label (index 3), read only by evaluation.
    assert results["primary_metric"]["name"] == "target_h_score"
    assert report["num_examples"] == 20 and len(report["per_class_accuracy"]) == 4


def test_own_folders_with_private_classes_on_both_sides_name_the_universal_setting(tmp_path):
  source, target = _folders(tmp_path, ("cat", "dog", "cow"), ("cat", "dog", "fox"))
  config = tiny_config(str(tmp_path / "tfds"), source=source, target=target,
                       eval_source_split="train", eval_target_split="train", source_val_split="")
  with pytest.raises(ValueError, match=r"only in the source: cow; classes only in the target: "
                                       r"fox.*--config.setting=universal") as error:
    train.open_data(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  config.setting = "universal"
  domains = train.open_data(config, str(tmp_path / "run"))
  assert domains.labels.setting == "universal" and domains.num_classes == 3  # no unknown output
  # cat, dog, and fox as unknown (3); cow (1) is source-private.
  assert sorted(set(views.domain_labels(domains.target_eval))) == [0, 2, 3]


def test_a_preset_of_another_dataset_is_refused_not_applied(tmp_path):
  # configs/pada.py:synth_partial carries the digits preset; on own folders it would
  # select "the first five classes" of whatever the folders hold.
  source, target = _folders(tmp_path, ("cat", "dog", "cow"), ("cat", "dog"))
  config = tiny_config(str(tmp_path / "tfds"), source=source, target=target,
                       eval_source_split="train", eval_target_split="train", source_val_split="",
                       **{"data.label_sets": "digits_partial"})
  with pytest.raises(ValueError, match=r"label_sets='digits_partial' .* does not fit "
                                       r"image_folder:.*cat, cow, dog; set "
                                       r"--config.data.label_sets=''") as error:
    train.open_data(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
