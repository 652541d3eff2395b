"""The method contract: every config builds its method and trains; baselines,
terms, composition, warm-up and pre-training behave as documented."""

import functools
import glob
import importlib
import inspect
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import DG_METHODS, MULTI_SOURCE_METHODS, NEW_METHODS, REPO, SSL_METHODS, tiny_config
from tljax import losses, models, train
from tljax.methods import base, create_method, method_names, terms

sys.path.insert(0, str(REPO))

# Configs that are not one method's: the defaults, the composer, the probe.
_NOT_METHODS = {"default", "combine", "linear_probe"}
# Regression methods, whose configs take regression tasks (tests/test_regression.py).
_REGRESSION_ONLY = {"dd", "rsd"}
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(str(REPO / "configs" / "*.py"))
                 if os.path.basename(p)[:-3] not in _NOT_METHODS | _REGRESSION_ONLY | {"__init__"})


def _embedded_task(name: str) -> str:
  """The config's embedded task: its `get_config` default (digits for
  single-source adaptation; digits_dg, ssl_digits, synth_partial, ... for the
  configs of other settings)."""
  get_config = importlib.import_module(f"configs.{name}").get_config
  return inspect.signature(get_config).parameters["arg"].default


# The image-data counterpart of each embedded task (TLlib's benchmarks).
_REAL_TASK = {"digits_dg": "pacs_dg", "digits_ms": "office_home_ms",
              "synth_partial": "office31_partial", "synth_open_set": "office31_open_set",
              "synth_universal": "office31_universal"}


def _config(name, task=None):
  return importlib.import_module(f"configs.{name}").get_config(task or _embedded_task(name))


def test_every_method_has_a_config():
  for name in method_names():
    assert os.path.exists(REPO / "configs" / f"{name}.py"), name


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("task", ["embedded", "images"])
def test_config_builds_its_method(name, task):
  embedded = _embedded_task(name)
  config = _config(name, embedded if task == "embedded" else _REAL_TASK.get(embedded, "office31"))
  method = create_method(config.method, num_classes=10)
  if isinstance(method, terms.TermsMethod) and config.method.name != "source_only_joint_bn":
    assert [n for n, _ in method.terms] == config.method.name.split("+")
    assert method.forward == config.method.forward
    for (term_name, term), cls in zip(method.terms, config.method.name.split("+")):
      assert type(term) is terms.TERMS.get(cls)
  else:
    from tljax import methods  # pylint: disable=g-import-not-at-top
    assert type(method) is methods.METHODS.get(config.method.name)


def test_config_errors_name_the_field():
  dann = _config("dann").method
  with pytest.raises(ValueError, match=r"fields \['trade_of'\] that 'dann' does not take"):
    create_method({**dann.to_dict(), "trade_of": 1.0}, num_classes=10)
  with pytest.raises(ValueError, match=r"lacks \['grl_hi'\]"):
    create_method({k: v for k, v in dann.to_dict().items() if k != "grl_hi"}, num_classes=10)
  with pytest.raises(ValueError, match="unknown config.method.name 'dannn'"):
    create_method({"name": "dannn"}, num_classes=10)
  combined = _config("cdan_mcc").method.to_dict()
  with pytest.raises(ValueError, match=r"fields \['temperature'\] that 'cdan\+mcc' does not take"):
    create_method({**combined, "temperature": 2.0}, num_classes=10)
  with pytest.raises(ValueError, match="names a term twice"):
    create_method({**combined, "name": "mcc+mcc"}, num_classes=10)
  with pytest.raises(ValueError, match=r"\['source_only'\] are not adaptation terms"):
    create_method({**combined, "name": "mcc+source_only"}, num_classes=10)


def test_combine_config_composes_any_terms():
  config = importlib.import_module("configs.combine").get_config("dann+entropy_min,digits")
  method = create_method(config.method, num_classes=10)
  assert [n for n, _ in method.terms] == ["dann", "entropy_min"]
  assert method.terms[1][1].trade_off == _config("entropy_min").method.trade_off


# ----------------------------------------------------------------------------
# Every method trains, end to end.
# ----------------------------------------------------------------------------


def short_config(name, digits_data_dir, **method_fields):
  config = _config(name)
  config.method.update(method_fields)
  task = _embedded_task(name)
  if task in ("digits_dg", "digits_ms"):
    # Two labelled domains the session has built (Digits-DG's own include the
    # 20,000 rendered digits); multi-source adapts them to one of them: the
    # run's mechanics are under test here, not its accuracy.
    config.source, config.test_domains = "digits,digits_m", ""
    config.target = "digits_m" if task == "digits_ms" else ""
    config.target_split = config.eval_target_split = "test"
  tiny = tiny_config(digits_data_dir, total_steps=2, eval_every=2, checkpoint_every=2,
                     log_every=1)
  for key in ("data_dir", "batch_size", "eval_batch_size", "total_steps", "eval_every",
              "checkpoint_every", "log_every"):
    config[key] = tiny[key]
  config.data.num_threads = 0
  config.model.backbone_kwargs.widths = (8, 8, 16)
  config.model.bottleneck_dim = 32
  if config.model.head_hidden:
    config.model.head_hidden = 32
  shrink = lambda fields: fields.update(
      {k: v for k, v in (("head_width", 32), ("hidden_sizes", (32, 32))) if k in fields})
  shrink(config.method)
  for value in config.method.values():
    if isinstance(value, ml_collections.ConfigDict):
      shrink(value)
  if "pretrain_steps" in config.method and config.method.pretrain_steps:
    config.method.pretrain_steps = 1
  # Smoke runs from a random start, also of the configs that declare a pretrained one.
  config.model.init_required = False
  if "threshold" in config.method:  # let some pseudo-labels pass in two steps of a fresh network
    config.method.threshold = 0.0
  return config


def _short_run(name, digits_data_dir, tmp_path, **method_fields):
  config = short_config(name, digits_data_dir, **method_fields)
  workdir = str(tmp_path / name)
  results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:2])
  assert results["method"] == config.method.name and results["step"] == 2
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if '"train"' in l]


# (`test_new_methods.py`, `test_dg.py` and `test_ssl.py` run their methods
# themselves, on one and two devices; Noisy Student's run needs a finished
# teacher run: `test_ssl.py` makes both.)
_RUN_ELSEWHERE = set(NEW_METHODS + DG_METHODS + MULTI_SOURCE_METHODS + SSL_METHODS) | {"noisy_student"}


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - _RUN_ELSEWHERE))
def test_short_run(name, digits_data_dir, tmp_path):
  lines = _short_run(name, digits_data_dir, tmp_path)
  assert len(lines) == 2 and all(np.isfinite(l["loss"]) for l in lines)
  if name in ("source_only", "adabn", "source_only_joint_bn"):
    assert all("transfer_loss" not in l or l["transfer_loss"] == 0 for l in lines)
  elif "transfer_loss" in lines[-1]:
    assert lines[-1]["transfer_loss"] != 0


# ----------------------------------------------------------------------------
# Steps on fixed batches.
# ----------------------------------------------------------------------------


def _setup(config, devices=1):
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:devices])
  return train.build(config, 10, mesh), NamedSharding(mesh, P("data"))


def _batch(config, sharding, seed=0, target_shift=1.0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, 28, 28, 3)
  source = {"image": rng.standard_normal(shape, dtype=np.float32),
            "label": rng.integers(0, 10, config.batch_size).astype(np.int32)}
  target = {"image": rng.standard_normal(shape, dtype=np.float32) + target_shift}
  return jax.device_put({"source": source, "target": target}, sharding)


def _copy(state):
  return jax.tree.map(lambda x: x.copy(), state)


def _bytes(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def test_erm_step_does_not_depend_on_the_target_batch(make_config):
  config = make_config()
  assert config.method.name == "source_only"
  setup, sharding = _setup(config)
  a = _batch(config, sharding, seed=0, target_shift=1.0)
  b = {"source": a["source"], "target": _batch(config, sharding, seed=5, target_shift=-3.0)["target"]}
  state_a, metrics_a = setup.train_step(_copy(setup.state), a)
  state_b, metrics_b = setup.train_step(_copy(setup.state), b)
  assert _bytes(state_a) == _bytes(state_b)
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  # The joint-BatchNorm variant does depend on it (the target batch is normalised with it).
  joint = make_config(method=_config("source_only_joint_bn").method)
  setup, sharding = _setup(joint)
  state_a, _ = setup.train_step(_copy(setup.state), a)
  state_b, _ = setup.train_step(_copy(setup.state), b)
  assert _bytes(state_a.params) != _bytes(state_b.params)


def test_adabn_evaluates_with_target_statistics(make_config, digits_data_dir, tmp_path):
  """AdaBN trains exactly as ERM and evaluates with BatchNorm statistics
  recomputed on the target training split."""
  erm = train.train_and_evaluate(make_config(), str(tmp_path / "erm"), devices=jax.devices()[:1])
  adabn = train.train_and_evaluate(make_config(method=_config("adabn").method),
                                   str(tmp_path / "adabn"), devices=jax.devices()[:1])
  from tljax.workdir import latest_state
  a, _ = latest_state(str(tmp_path / "erm"))
  b, _ = latest_state(str(tmp_path / "adabn"))
  assert _bytes(a["params"]) == _bytes(b["params"])
  # Recomputed here: ERM's classifier on the target test split, with its own
  # statistics (ERM's number) and with those of the target training split (AdaBN's).
  from tljax.data import open_domain
  config = make_config()
  setup, sharding = _setup(config)
  variables = base.owned({"params": a["params"], **a["model_state"]}, base.CLASSIFIER)
  target_train = open_domain("digits_m", "train", data_dir=digits_data_dir)
  adapted = train.recompute_batch_statistics(setup, variables, target_train, config, sharding)
  target_test = open_domain("digits_m", "test", data_dir=digits_data_dir)
  for run, run_variables in ((erm, variables), (adabn, adapted)):
    pred = train.predict_all(setup, run_variables, target_test, config, sharding)
    run["recomputed"] = np.mean(np.argmax(pred.logits, -1) == pred.labels)
  assert erm["target_accuracy"] == pytest.approx(erm["recomputed"], abs=1e-9)
  assert adabn["target_accuracy"] == pytest.approx(adabn["recomputed"], abs=1e-9)


def test_batch_statistics_are_the_target_moments(make_config, digits_data_dir):
  """The recomputed statistics of the first BatchNorm layer equal the mean and
  variance, over the target images, of the first convolution's output: per
  batch the unbiased variance (PyTorch's running variance), then averaged."""
  from tljax.data import open_domain
  config = make_config(eval_batch_size=64)
  setup, sharding = _setup(config)
  domain = open_domain("digits_m", "train", data_dir=digits_data_dir)
  variables = base.owned(setup.state.variables, base.CLASSIFIER)
  recomputed = train.recompute_batch_statistics(setup, variables, domain, config, sharding)
  batches = [b["image"] for b in train.eval_batches(config, domain, sharding)]
  n_full = len(domain) // 64
  # The first convolution has no bias: recompute its output directly, in float64.
  kernel = np.asarray(variables["params"]["backbone"]["conv1"]["kernel"], np.float64)
  means, variances = [], []
  for images in batches[:n_full]:
    x = np.asarray(images, np.float64)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = np.asarray(y).reshape(-1, kernel.shape[-1])
    means.append(y.mean(0))
    variances.append(y.var(0, ddof=1))
  stats = recomputed["batch_stats"]["backbone"]["bn1"]
  np.testing.assert_allclose(stats["mean"], np.mean(means, 0), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(stats["var"], np.mean(variances, 0), rtol=1e-3, atol=1e-4)


def test_composed_terms_add_their_weighted_values(make_config):
  method = _config("cdan_mcc").method
  method.mcc.trade_off = 0.5
  method.cdan.hidden_sizes = (16, 16)
  config = make_config(method=method)
  setup, sharding = _setup(config)
  _, metrics = setup.train_step(_copy(setup.state), _batch(config, sharding))
  np.testing.assert_allclose(metrics["transfer_loss"],
                             metrics["cdan/domain_loss"] + 0.5 * metrics["mcc/mcc"], rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], metrics["cls_loss"] + metrics["transfer_loss"],
                             rtol=1e-5)
  assert "cdan" in setup.state.params["method"] and "mcc" not in setup.state.params["method"]


@pytest.mark.parametrize("name", ["bsp", "adda"])
def test_phases_chosen_on_the_host_equal_the_in_step_switch(make_config, name):
  """The trainer compiles one step per phase (no `lax.cond`, slow on XLA:CPU);
  the same steps through one function that switches inside the step agree."""
  method = _config(name).method
  method.pretrain_steps = 2
  config = make_config(method=method)
  setup, sharding = _setup(config)
  assert setup.train_step.boundaries == (2,)
  anywhere = jax.jit(functools.partial(train.guarded_step, method=setup.method, ctx=setup.ctx))
  assert setup.ctx.steps is None
  host, switched = _copy(setup.state), _copy(setup.state)
  for step in range(4):
    batch = _batch(config, sharding, seed=step)
    host, host_metrics = setup.train_step(host, batch, step)
    switched, switched_metrics = anywhere(switched, batch)
    assert float(host_metrics["pretraining"]) == float(step < 2)
    assert sorted(host_metrics) == sorted(switched_metrics)
    np.testing.assert_allclose(float(host_metrics["loss"]), float(switched_metrics["loss"]),
                               rtol=1e-5)
    for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(switched.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_pretraining_phase_trains_only_the_classifier(make_config):
  method = _config("bsp").method
  method.pretrain_steps = 2
  method.dann.hidden_sizes = (16, 16)
  config = make_config(method=method)
  setup, sharding = _setup(config)
  state = setup.state
  initial = jax.device_get(state)
  history = []
  for step in range(3):
    state, metrics = setup.train_step(state, _batch(config, sharding, seed=step))
    history.append((jax.device_get(state), jax.device_get(metrics)))
  (after_1, m1), (after_2, m2), (after_3, m3) = history
  assert m1["pretraining"] == 1 and m2["pretraining"] == 1 and m3["pretraining"] == 0
  # The logged rate is the one applied: the pre-training optimizer's (scaled),
  # then the adaptation optimizer's, whose schedule starts at its first update.
  lr, scale = config.optimizer.learning_rate, method.pretrain_lr_scale
  np.testing.assert_allclose(m1["learning_rate"], scale * float(setup.ctx.schedule(0)), rtol=1e-6)
  np.testing.assert_allclose(m2["learning_rate"], scale * float(setup.ctx.schedule(1)), rtol=1e-6)
  np.testing.assert_allclose(m3["learning_rate"], float(setup.ctx.schedule(0)), rtol=1e-6)
  assert float(setup.ctx.schedule(0)) == pytest.approx(lr)
  assert m1["transfer_loss"] == 0 and m3["transfer_loss"] != 0
  disc = lambda s: _bytes(s.params["method"]["dann"])
  assert disc(after_2) == disc(initial) and disc(after_3) != disc(initial)
  assert _bytes(after_1.params["classifier"]) != _bytes(initial.params["classifier"])
  # The main optimizer starts at the switch: its step count is 1 after step 3.
  counts = [np.asarray(x) for x in jax.tree.leaves(after_3.opt_state["main"])
            if np.ndim(x) == 0 and np.issubdtype(np.asarray(x).dtype, np.integer)]
  assert counts and all(c == 1 for c in counts)


# ----------------------------------------------------------------------------
# An auxiliary classifier sown by the backbone (Inception-v3's), any method.
# ----------------------------------------------------------------------------


@models.register("aux_cnn_for_tests")
class _AuxCNN(nn.Module):
  """Two convolutions, and in training an auxiliary classifier on the first
  one's pooled map, sown as `aux_logits` the way Inception-v3 sows its own."""

  aux_logits: bool = False
  num_classes: int = 0
  dtype: Any = jnp.float32
  frozen_norm: str = ""

  @nn.compact
  def __call__(self, images, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), (2, 2))(images)))
    if self.aux_logits:
      aux_logits = nn.Dense(self.num_classes, name="AuxLogits")(x.mean((1, 2)))
      if train:
        self.sow("intermediates", "aux_logits", aux_logits)
    return nn.relu(nn.Conv(8, (3, 3), (2, 2))(x)).mean((1, 2))


def _aux_config(make_config, method="source_only", aux_loss_weight=0.4, aux_logits=True):
  # No dropout and no weight decay: one forward pass reproduces the step's
  # logits, and a parameter without gradient stays as it was.
  return make_config(**{"method": _config(method).method, "model.name": "aux_cnn_for_tests",
                        "model.backbone_kwargs": ml_collections.ConfigDict(
                            {"aux_logits": aux_logits}),
                        "model.aux_loss_weight": aux_loss_weight, "model.head_dropout": 0.0,
                        "optimizer.weight_decay": 0.0})


def _numpy_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -log_probs[np.arange(len(labels)), np.asarray(labels)].mean()


def _training_pass(setup, images):
  """`(logits, aux_logits)` of a training-mode pass of the initial classifier."""
  variables = base.owned(setup.state.variables, base.CLASSIFIER)
  (_, logits), updates = setup.ctx.classifier.apply(
      variables, images, train=True, mutable=["batch_stats", "intermediates"])
  return logits, updates["intermediates"]["backbone"]["aux_logits"][0]


def test_aux_head_loss_is_weighted_cross_entropy_and_trains_it(make_config):
  """ERM with `aux_loss_weight=0.4`: the loss is `CE(logits) + 0.4 *
  CE(aux_logits)` of a separate forward pass, and the step moves the
  auxiliary head; with weight 0 the loss is `CE(logits)` and the head stays."""
  results = {}
  for weight in (0.4, 0.0):
    config = _aux_config(make_config, aux_loss_weight=weight)
    setup, sharding = _setup(config)
    batch = _batch(config, sharding)
    logits, aux_logits = _training_pass(setup, batch["source"]["image"])
    labels = batch["source"]["label"]
    before = jax.device_get(setup.state.params["classifier"]["backbone"]["AuxLogits"])
    state, metrics = setup.train_step(_copy(setup.state), batch)
    after = jax.device_get(state.params["classifier"]["backbone"]["AuxLogits"])
    want = _numpy_cross_entropy(logits, labels) + weight * _numpy_cross_entropy(aux_logits, labels)
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
    results[weight] = _bytes(before) != _bytes(after)
  assert results == {0.4: True, 0.0: False}
  # The two losses differ by the auxiliary term alone (not 0 on random weights).
  assert _numpy_cross_entropy(aux_logits, labels) > 0.1


@pytest.mark.parametrize("name", ["dann", "dan"])
def test_aux_head_loss_reads_the_labelled_rows(make_config, name):
  """Through `forward_domains`: the auxiliary loss is the source rows' of one
  pass over `[source; target]` (DANN, BatchNorm over both), or of the source
  pass alone (DAN: one pass per domain)."""
  config = _aux_config(make_config, method=name)
  setup, sharding = _setup(config)
  batch = _batch(config, sharding)
  source, target = batch["source"]["image"], batch["target"]["image"]
  if setup.method.forward == "joint":
    _, aux_logits = _training_pass(setup, jnp.concatenate([source, target]))
    aux_logits = aux_logits[:len(source)]
  else:
    _, aux_logits = _training_pass(setup, source)
  _, metrics = setup.train_step(_copy(setup.state), batch)
  want = 0.4 * _numpy_cross_entropy(aux_logits, batch["source"]["label"])
  np.testing.assert_allclose(float(metrics["aux_loss"]), want, rtol=1e-5)


def test_only_the_inception_recipe_trains_an_auxiliary_head():
  """Every method's config leaves `aux_loss_weight` at 0; the Inception-v3
  fine-tuning recipe sets torchvision's 0.4 on a backbone that sows its
  auxiliary logits at 299 px (checked on shapes, as `train.build` does)."""
  every_config = sorted(os.path.basename(p)[:-3] for p in glob.glob(str(REPO / "configs" / "*.py"))
                        if not p.endswith("__init__.py"))
  weights = {importlib.import_module(f"configs.{name}").get_config().model.aux_loss_weight
             for name in every_config}
  assert weights == {0.0}
  inception = _config("finetune", "office31_inception")
  assert (inception.model.name, inception.model.aux_loss_weight) == ("inception_v3", 0.4)
  classifier = models.create_classifier(inception.model, 31)
  train._check_sows_aux_logits(classifier, (299, 299, 3), "inception_v3")  # raises if not
  inception.model.backbone_kwargs.aux_logits = False
  with pytest.raises(ValueError, match="inception_v3 backbone has none in training"):
    train._check_sows_aux_logits(models.create_classifier(inception.model, 31), (299, 299, 3),
                                 "inception_v3")


def test_aux_loss_weight_is_refused_where_nothing_trains_it(make_config):
  """A backbone without an auxiliary classifier is refused at build; a method
  whose loss adds no auxiliary term (BSS computes its own) when its step is
  traced, instead of leaving the head at its initialisation."""
  config = _aux_config(make_config, aux_logits=False)
  with pytest.raises(ValueError, match="aux_cnn_for_tests backbone has none in training"):
    _setup(config)
  config = _aux_config(make_config, method="bss")
  setup, sharding = _setup(config)
  with pytest.raises(ValueError, match="does not add its term"):
    setup.train_step(_copy(setup.state), _batch(config, sharding))


# ----------------------------------------------------------------------------
# Terms on fixed outputs.
# ----------------------------------------------------------------------------


def _outputs(n=8, d=6, c=4, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return base.DomainOutputs(f(n, d), f(n, d) + 1.0, f(n, c), f(n, c),
                            jnp.asarray(rng.integers(0, c, n)))


def _term_and_vars(name, **fields):
  method_config = _config(name).method
  method_config.update(fields)
  method = create_method(method_config, num_classes=4)
  (_, term), = method.terms
  outputs = _outputs()
  variables = term.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, outputs,
                        step=jnp.asarray(0), train=False)
  return term, variables, outputs


@pytest.mark.parametrize("name", ["dann", "cdan", "mdd"])
def test_adversary_sees_the_reversed_gradient(name, monkeypatch):
  """d(term)/d(features) = -coeff * d(adversary's own loss)/d(features), while the
  adversary's parameters descend that loss directly."""
  fields = {"head_dropout": 0.0, "head_width": 16} if name == "mdd" else {"hidden_sizes": (16, 16)}
  term, variables, outputs = _term_and_vars(name, **fields)
  step = jnp.asarray(700)
  coeff = float(term.grl_coeff(step))

  def value(params, features_s, features_t):
    out = outputs.replace(source_features=features_s, target_features=features_t)
    (v, _), _ = term.apply({**variables, "params": params}, out, step=step, train=True,
                           mutable=["batch_stats"])
    return v

  args = (variables["params"], outputs.source_features, outputs.target_features)
  with_reversal = jax.grad(value, argnums=(0, 1, 2))(*args)
  monkeypatch.setattr(losses, "gradient_reversal", lambda x, coeff=1.0: x)
  plain = jax.grad(value, argnums=(0, 1, 2))(*args)
  for a, b in zip(jax.tree.leaves(with_reversal[0]), jax.tree.leaves(plain[0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # adversary: plain gradient
  for a, b in zip(with_reversal[1:], plain[1:]):
    np.testing.assert_allclose(a, -coeff * b, rtol=1e-4, atol=1e-8)  # features: reversed
  assert float(jnp.abs(with_reversal[1]).max()) > 0


def test_scale_gradient_is_identity_forward_and_scales_backward():
  x = jnp.asarray([1.0, -2.0, 3.0])
  np.testing.assert_array_equal(losses.scale_gradient(x, 0.25), x)
  grad = jax.grad(lambda y: jnp.sum(losses.scale_gradient(y, 0.25) ** 2))(x)
  np.testing.assert_allclose(grad, 0.25 * 2 * x)
  grad = jax.grad(lambda y: jnp.sum(losses.gradient_reversal(y, 0.5) ** 2))(x)
  np.testing.assert_allclose(grad, -0.5 * 2 * x)


@pytest.mark.parametrize("name", ["dann", "deep_coral"])
def test_warmup_scales_what_reaches_the_classifier_only(name, make_config):
  """With `trade_off_warmup`, the gradient reaching the classifier is scaled by
  the progressive weight; a discriminator's own gradient is not."""
  fields = {"hidden_sizes": (16, 16)} if name == "dann" else {}
  plain_method = _config(name).method
  plain_method.update(fields)
  warm_method = _config(name).method
  warm_method.update(fields, trade_off_warmup=40)
  grads = {}
  for label, method_config in (("plain", plain_method), ("warm", warm_method)):
    config = make_config(method=method_config)
    setup, sharding = _setup(config)
    state = setup.state.replace(step=jnp.asarray(4))
    batch = _batch(config, sharding)
    rng = jax.random.key(3)

    def transfer(params):
      variables = {**state.variables, "params": params}
      _, (_, metrics) = setup.method.loss(setup.ctx, variables, batch, state.step, rng)
      return metrics["transfer_loss"]

    grads[label] = jax.grad(transfer)(state.params)
  scale = float(base.progressive_weight(jnp.asarray(4), 40))
  assert 0 < scale < 0.5
  for path, plain in jax.tree_util.tree_flatten_with_path(grads["plain"])[0]:
    warm = dict(jax.tree_util.tree_flatten_with_path(grads["warm"])[0])[path]
    owner = path[0].key
    expected = np.asarray(plain) * (scale if owner == "classifier" else 1.0)
    np.testing.assert_allclose(warm, expected, rtol=2e-4, atol=1e-7, err_msg=str(path))
  assert any(np.abs(np.asarray(g)).max() > 0
             for g in jax.tree.leaves(grads["warm"]["classifier"]))


def test_progressive_weight_follows_jans_schedule():
  # 2 / (1 + exp(-10 p)) - 1 = tanh(5 p): tanh(0.5), tanh(2.5), tanh(5), held after the warm-up.
  for step, want in ((0, 0.0), (10, 0.4621171573), (50, 0.9866142982), (100, 0.9999092043),
                     (300, 0.9999092043)):
    np.testing.assert_allclose(base.progressive_weight(jnp.asarray(step), 100), want,
                               rtol=1e-6, atol=1e-7)
  assert float(base.progressive_weight(jnp.asarray(7), 0)) == 1.0


def test_cdan_randomized_map_is_a_fixed_constant():
  term, variables, outputs = _term_and_vars("cdan", randomized=True, randomized_dim=16,
                                            hidden_sizes=(16, 16))
  rf, rg = variables["constants"]["randomized_map"]
  assert rf.shape == (6, 16) and rg.shape == (4, 16)
  assert "randomized_map" not in repr(jax.tree_util.tree_structure(variables["params"]))
  _, updates = term.apply(variables, outputs, step=jnp.asarray(5), train=True,
                          mutable=["batch_stats", "constants"])
  np.testing.assert_array_equal(updates["constants"]["randomized_map"][0], rf)


def test_dan_sums_layers():
  term, variables, outputs = _term_and_vars("dan", layers=("features", "logits"), linear=False)
  (value, metrics), _ = term.apply(variables, outputs, step=jnp.asarray(0), mutable=["batch_stats"])
  alphas = tuple(term.alphas)
  expected = (losses.mk_mmd(outputs.source_features, outputs.target_features, alphas=alphas)
              + losses.mk_mmd(outputs.source_logits, outputs.target_logits, alphas=alphas))
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert set(metrics) == {"mk_mmd_features", "mk_mmd_logits"}


def test_mdd_and_afn_follow_tllib_initialisation():
  """MDD's heads and bottleneck, AFN's bottleneck: TLlib's initialisations."""
  from tljax import models
  for name, checks in (("mdd", ("tllib_mdd",)), ("afn", ("tllib_afn",))):
    config = _config(name)
    assert config.model.init_scheme == checks[0]
    classifier = models.create_classifier(config.model, 10)
    variables = classifier.init(jax.random.key(0), jnp.zeros((2, 28, 28, 3)))
    params = variables["params"]
    kernel = np.asarray(params["bottleneck"]["linear"]["kernel"])
    bias = np.asarray(params["bottleneck"]["linear"]["bias"])
    if name == "mdd":
      assert abs(kernel.std() - 0.005) < 0.0005 and np.all(bias == 0.1)
      head = np.asarray(params["head"]["hidden"]["kernel"])
      assert abs(head.std() - 0.01) < 0.001 and np.all(params["head"]["hidden"]["bias"] == 0)
      assert config.model.head_hidden == config.model.bottleneck_dim  # TLlib: width = bottleneck
    else:
      assert abs(kernel.std() - 0.01) < 0.001 and abs(bias.std() - 0.01) < 0.003
      scale = np.asarray(params["bottleneck"]["bn"]["scale"])
      assert abs(scale.mean() - 1) < 0.003 and 0.005 < scale.std() < 0.015


def test_afn_dropout_preserves_the_l2_norm():
  """TLlib's AFN block: kept units scaled by 1/sqrt(1-p), not 1/(1-p)."""
  from tljax.models.classifier import Bottleneck
  x = jnp.ones((4, 3))
  for l2, scale in ((True, 1 / np.sqrt(0.5)), (False, 2.0)):
    layer = Bottleneck(features=512, norm=False, dropout=0.5, l2_preserving_dropout=l2)
    variables = layer.init(jax.random.key(0), x)
    train_out = layer.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    eval_out = layer.apply(variables, x, train=False)
    kept = np.asarray(train_out) != 0
    np.testing.assert_allclose(np.asarray(train_out)[kept], scale * np.asarray(eval_out)[kept],
                               rtol=1e-5)
