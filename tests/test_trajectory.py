"""Trajectory parity with the reference implementations: tljax and a PyTorch
restatement of each method's reference code train the same network from the
same weights on the same batches, and must stay together.

`test_trajectory_matches_tllib`: TLlib's adversarial and discrepancy examples,
restated in `benchmarks/torch_reference.py` (TLlib itself no longer imports): its
loss modules (`DomainAdversarialLoss`, `ConditionalDomainAdversarialLoss`,
MK-MMD / JMMD with their index matrices,
`ClassificationMarginDisparityDiscrepancy`, `MinimumClassConfusionLoss`,
`AdaptiveFeatureNorm`, `BatchSpectralPenalizationLoss`), its
`WarmStartGradientReverseLayer` (the coefficient of step `i` is computed before
`auto_step` / `step()` advances it), its domain discriminator, its bottlenecks
and heads, and each example's training loop: the forward order (one pass over
`[source; target]`, or one per domain for DAN and AFN; ERM and BSP's
pre-training pass the source batch alone), `torch.optim.SGD` over
`get_parameters()`'s groups, and `LambdaLR(lambda x: lr * (1 + gamma x)^-decay)`
stepped after each update (AFN: no scheduler, momentum 0.9 only for the
bottleneck and head groups, no nesterov).

`test_method_matches_reference`: every other method, against the restatement
of its own reference code in `tests/torch_reference_methods.py` (TLlib's ADDA,
MCD, FixMatch, self-ensembling, pseudo-label, CORAL, entropy and task-adaptation
examples, and its partial and open-set PADA, IWAN and OSBP; DeepDA's BNM and
DSAN; the SHOT, CMD and UAN authors' code; PyTorch's BatchNorm for AdaBN; one
trunk with N heads), each in its reference's setting where tljax has it as an
option, over its whole phase structure (ADDA's pre-training, MCD's steps
A/B/C, refreshes of pseudo-labels or of PADA's class weights, a category
relationship or channel attention through the trainer's `predict_all`).
PADA, IWAN, OSBP and UAN run on label spaces whose source and target classes
differ (`MethodCase.labels`: partial, open-set, universal). Views
(FixMatch's strong, the mean teacher's) are given to both sides as arrays: the
step is compared on the same views, not the augmentations that draw them.
Method state (a teacher, pseudo-labels, a starting point, ...) is compared too,
and each case checks that its own mechanism acted (`MethodCase.signal`).

tljax runs through `train.build` and its jitted step. Both sides compute in
float64 (JAX x64, torch `.double()`), so agreement is exact up to rounding and
any semantic difference shows far above it. The network is a two-block
`small_cnn` on 8x8 images (widths 4, 4), a bottleneck of 12, 4 classes, 8
examples per domain. Dropout masks are tljax's own: the units each dropout
layer keeps are sent to the host from inside the compiled step, and the
reference drops the same units. A parameter group that is frozen on the tljax
side is `requires_grad=False` there, and its BatchNorm runs in eval mode
(tljax's documented fine-tuning behaviour, `tljax.optim.frozen_norm_regex`).

Compared: the loss of every step, and after the last step every parameter,
BatchNorm running statistic (PyTorch's: the running variance averages the
unbiased batch variance) and piece of method state, to 1e-9 relative.
The domain-generalisation, multi-source, regression and semi-supervised
methods have their cases in files of their own (`PARITY_FILES`), in the same
harness; their rows join this table. `TLJAX_PARITY_TABLE=path.md`, with this file and those run in
one process (`TABLE_COMMAND`), writes the table of the largest relative
differences (`experiments/results/trajectory_parity.md`, at the session's end:
`conftest.pytest_sessionfinish`).
"""

import dataclasses
import glob
import importlib
import os
import sys
import zlib
from typing import Any, Callable

import flax.linen as nn
import flax.traverse_util
import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from tljax import losses
from tljax import train
from tljax.data import registry
from tljax.data import task as task_lib
from tljax.methods import base as methods_base

sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch", reason="trajectory parity needs PyTorch (pip install tljax[test])")
from benchmarks.torch_reference import Reference, matches  # noqa: E402  pylint: disable=g-import-not-at-top
import torch_reference_methods as methods_torch  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_CLASSES = 4
BATCH = 8
IMAGE = (8, 8, 3)
WIDTHS = (4, 4)
BOTTLENECK = 12
HIDDEN = 16
STEPS = 30
LR = 0.01
GAMMA = 0.01  # TLlib uses 0.001-0.0003; larger here so that an off-by-one in the schedule shows
DECAY = 0.75
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
GRL_MAX_STEPS = 10  # TLlib: 1000; short so that the reversal coefficient changes within the run
TOLERANCE = 1e-9
FLOAT32_TOLERANCE = 1e-6  # method state tljax computes in float32 (DELTA's attention)
# Confidence threshold of the self-training cases (TLlib: 0.8-0.95), low enough
# that the small network's predictions pass it for some examples and not others.
PSEUDO_LABEL_THRESHOLD = 0.4

RESULTS: dict[str, dict[str, Any]] = {}


pytestmark = pytest.mark.usefixtures("float64_parity")


def _leaf_name(path: tuple[str, ...]) -> str:
  leaf = "weight" if path[-1] in ("kernel", "scale") else path[-1]
  return "/".join((*path[:-1], leaf))


def _tljax_variables(state) -> dict[str, np.ndarray]:
  """A train state's variables, keyed like `Reference.variables` (flax's
  `kernel`/`scale` named `weight`, as PyTorch has one name for both), and
  its method state as `state:<path>` (a teacher, pseudo-labels, ...)."""
  out = {}
  for collection, tree in state.variables.items():
    if collection not in ("params", "batch_stats"):
      continue
    for path, value in flax.traverse_util.flatten_dict(tree).items():
      out[collection + ":" + _leaf_name(path)] = np.asarray(value, np.float64)
  if state.method_state:
    for path, value in flax.traverse_util.flatten_dict(state.method_state).items():
      out["state:" + _leaf_name(path)] = np.asarray(value, np.float64)
  return out


# ----------------------------------------------------------------------------
# The tljax side.
# ----------------------------------------------------------------------------


def _batches(steps: int, seed: int):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    out.append({"source": {"image": rng.standard_normal((BATCH, *IMAGE)),
                           "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)},
                "target": {"image": rng.standard_normal((BATCH, *IMAGE)) * 1.5 + 0.5}})
  return out


@dataclasses.dataclass
class Data:
  """One case's inputs: the step batches and, for a method that reads a whole
  split (pseudo-label refreshes, AdaBN), that split as `(images, labels)`."""

  batches: list[dict]
  split: tuple[np.ndarray, np.ndarray] | None = None


def _domain(images: np.ndarray, labels: np.ndarray) -> registry.Domain:
  """A split tljax's evaluation pipeline reads (`train.predict_all`)."""
  return registry.Domain("parity", "train", [{"image": image.astype(np.float32), "label": int(y)}
                                             for image, y in zip(images, labels)],
                         tuple(str(c) for c in range(NUM_CLASSES)))


@dataclasses.dataclass
class TljaxRun:
  """What `_run_method` hands the comparison: the setup, the states before
  and after, each step's loss, metrics and dropout masks, and the variables
  at the snapshot steps and at the end."""

  setup: Any
  initial: Any
  final: Any
  losses: list[float]
  metrics: list[dict]
  masks: list[dict]
  snapshots: dict[int, dict]
  # The method state each refresh left, by step.
  refreshed: dict[int, Any] = dataclasses.field(default_factory=dict)


def _kept_units(record: dict[str, list]):
  """flax interceptor: every dropout layer that drops, its kept units sent to
  `record[module path]` by a host callback compiled into the step, so the
  masks are those of the step itself. (Where the input is 0, after a ReLU,
  the mask does not matter on either side.)"""

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if (isinstance(module, nn.Dropout) and context.method_name == "__call__" and module.rate > 0
        and not kwargs.get("deterministic", module.deterministic)):
      key = "/".join(module.scope.path)
      jax.debug.callback(lambda kept, key=key: record.setdefault(key, []).append(np.asarray(kept)),
                         out != 0, ordered=True)
    return out

  return intercept


def _run_method(config, data: Data, *, snapshot_steps=(),
                labels: task_lib.LabelSpace | None = None) -> TljaxRun:
  """tljax's jitted step over `data.batches`, with the trainer's refreshes
  (`Method.refresh_interval`, `Method.refresh` given `train.predict_all` over
  `data.split`), recording each step's dropout masks (`_kept_units`).
  `labels`: the task's label space (default: closed-set, NUM_CLASSES classes)."""
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  split = data.split
  setup = train.build(config, NUM_CLASSES if labels is None else labels.num_outputs, mesh, IMAGE,
                      num_target_examples=0 if split is None else len(split[0]), labels=labels)
  method = setup.method
  state = setup.state
  initial = jax.device_get(state)
  interval = 0
  if split is not None:
    interval = method.refresh_interval(-(-len(split[0]) // config.batch_size))
    domain = _domain(*split)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def predict(variables):
      out = train.predict_all(setup, variables, domain, config, sharding)
      if method.refresh_domain == "source":
        return out.features, out.logits, out.labels
      return out.features, out.logits

  record: dict[str, list] = {}
  losses, metrics, masks, snapshots, refreshed = [], [], [], {}, {}
  for step, batch in enumerate(data.batches):
    if step in snapshot_steps:
      snapshots[step] = _tljax_variables(jax.device_get(state))
    if interval and step % interval == 0:
      state = method.refresh(setup.ctx, state, predict)
      refreshed[step] = jax.device_get(state.method_state)
    with nn.intercept_methods(_kept_units(record)):
      state, step_metrics = setup.train_step(state, jax.tree.map(jax.numpy.asarray, batch))
    jax.effects_barrier()
    masks.append(dict(record))
    record.clear()
    metrics.append(jax.device_get(step_metrics))
    losses.append(float(step_metrics["loss"]))
  final = jax.device_get(state)
  snapshots[len(data.batches)] = _tljax_variables(final)
  return TljaxRun(setup, initial, final, losses, metrics, masks, snapshots, refreshed)


def _run_tljax(config, batches, pretrain_steps: int):
  run = _run_method(config, Data(batches),
                    snapshot_steps=(pretrain_steps,) if pretrain_steps else ())
  return run.initial, run.losses, run.masks, run.snapshots


# ----------------------------------------------------------------------------
# The cases.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One TLlib example. `config` adjusts `configs/<module>.py:digits`."""

  name: str
  module: str
  config: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  steps: int = STEPS
  frozen: str = ""  # regex over tljax paths of frozen parameters
  backbone_lr: float = 1.0  # TLlib's backbone group (0.1 when fine-tuning)
  afn_optimizer: bool = False


def _adversarial(fields: ml_collections.ConfigDict) -> None:
  fields.hidden_sizes = (HIDDEN, HIDDEN)
  fields.grl_max_steps = GRL_MAX_STEPS


def _mdd(config):
  # TLlib: both heads are as wide as the bottleneck, which configs/mdd.py follows.
  assert config.method.head_width == config.model.head_hidden == BOTTLENECK
  config.method.grl_max_steps = GRL_MAX_STEPS


def _bsp(config):
  config.method.pretrain_steps = 10
  _adversarial(config.method.dann)
  # TLlib's 2e-4 barely moves these small features; the penalty itself is under test.
  config.method.bsp.trade_off = 1e-2


def _afn(config):
  # TLlib's AFN example has no learning-rate scheduler (constant rate).
  config.schedule.name = "constant"


def _groups(config):
  _adversarial(config.method)
  config.param_groups = (("classifier/backbone/(conv1|bn1)/.*", "frozen"),
                         ("classifier/backbone/.*", 0.1), (".*", 1.0))


CASES = [
    Case("source_only", "source_only",
         lambda config: setattr(config.model, "bottleneck_dim", 0)),  # TLlib's ERM: no bottleneck
    Case("dann", "dann", lambda config: _adversarial(config.method)),
    Case("dan", "dan"),
    Case("jan", "jan"),
    Case("cdan", "cdan", lambda config: _adversarial(config.method)),
    Case("cdan_e", "cdan", lambda config: (_adversarial(config.method),
                                           config.method.update(entropy=True))),
    Case("mdd", "mdd", _mdd),
    Case("mcc", "mcc"),
    Case("afn", "afn", _afn, afn_optimizer=True),
    Case("bsp", "bsp", _bsp),
    Case("dann_finetune", "dann", _groups, frozen="classifier/backbone/(conv1|bn1)/.*",
         backbone_lr=0.1),
]


def _config(case: Case) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{case.module}").get_config("digits")
  config.model.name = "small_cnn"
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"widths": WIDTHS, "kernel_sizes": (3,) * len(WIDTHS), "conv_impl": "xla"})
  config.model.dtype = "float64"
  config.model.bottleneck_dim = BOTTLENECK
  config.batch_size = BATCH
  config.optimizer.learning_rate = LR
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY
  config.schedule.gamma = GAMMA
  config.schedule.power = DECAY
  # Splits a method reads whole (refreshes, AdaBN) are arrays already.
  config.eval_batch_size = BATCH
  config.data.eval_preprocess = ml_collections.ConfigDict({"name": "none"})
  case.config(config)
  return config


def _relative_differences(ours: dict, theirs: dict, keys) -> dict[str, float]:
  out = {}
  for key in keys:
    a, b = ours[key], theirs[key]
    assert a.shape == b.shape, (key, a.shape, b.shape)
    out[key] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
  return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_trajectory_matches_tllib(case):
  config = _config(case)
  pretrain_steps = config.method.get("pretrain_steps", 0)
  batches = _batches(case.steps, seed=len(RESULTS))
  initial, losses, masks, snapshots = _run_tljax(config, batches, pretrain_steps)

  reference = Reference(config, {}, num_classes=NUM_CLASSES, image=IMAGE, frozen=case.frozen,
                        backbone_lr=case.backbone_lr, afn_optimizer=case.afn_optimizer,
                        source_only=case.name == "source_only")
  reference.load({c: initial.variables[c] for c in ("params", "batch_stats")
                  if c in initial.variables})
  start = reference.variables()
  torch_losses, torch_snapshots = reference.run(batches, masks)

  loss_diff = [abs(a - b) / abs(b) for a, b in zip(losses, torch_losses)]
  final, torch_final = snapshots[case.steps], torch_snapshots[case.steps]
  assert set(final) == set(torch_final)
  params = [k for k in final if k.startswith("params:")]
  stats = [k for k in final if k.startswith("batch_stats:")]
  param_diff = _relative_differences(final, torch_final, params)
  stat_diff = _relative_differences(final, torch_final, stats)
  moved = _relative_differences(torch_final, start, params)
  RESULTS[case.name] = {"steps": case.steps, "loss": max(loss_diff),
                        "params": max(param_diff.values()),
                        "stats": max(stat_diff.values()) if stats else float("nan"),
                        "moved": min(v for k, v in moved.items()
                                     if not (case.frozen and matches(case.frozen, k[7:])))}
  worst = lambda d: max(d, key=d.get)
  assert max(loss_diff) < TOLERANCE, (np.argmax(loss_diff), losses, torch_losses)
  assert max(param_diff.values()) < TOLERANCE, (worst(param_diff), max(param_diff.values()))
  assert not stats or max(stat_diff.values()) < TOLERANCE, (worst(stat_diff),
                                                            max(stat_diff.values()))
  # Not vacuous: every trainable parameter moved, the frozen ones did not.
  for key, change in moved.items():
    if case.frozen and matches(case.frozen, key[len("params:"):]):
      assert change == 0, key
    else:
      assert change > 1e-4, (key, change)
  if pretrain_steps:
    # TLlib's separate pre-training run ends where tljax's pre-training phase does.
    switch, torch_switch = snapshots[pretrain_steps], torch_snapshots[pretrain_steps]
    keys = [k for k in switch if ":classifier/" in k]
    pretrain_diff = _relative_differences(switch, torch_switch, keys)
    RESULTS[case.name]["pretrain"] = max(pretrain_diff.values())
    assert max(pretrain_diff.values()) < TOLERANCE, worst(pretrain_diff)


# ----------------------------------------------------------------------------
# The other methods, against their own reference code
# (`tests/torch_reference_methods.py`).
# ----------------------------------------------------------------------------


def _images(rng: np.random.Generator, n: int, shift: float = 0.0,
            scale: float = 1.0) -> np.ndarray:
  # float32 values: a split goes through tljax's input pipeline, which casts to float32.
  return (rng.standard_normal((n, *IMAGE)) * scale + shift).astype(np.float32).astype(np.float64)


def _labels(rng: np.random.Generator, n: int, classes: int = NUM_CLASSES) -> np.ndarray:
  # Every class equally often (a category relationship needs every class).
  return rng.permutation(np.arange(n) % classes).astype(np.int32)


def _view(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Another view of the same images: shifted by a pixel, with noise."""
  noise = 0.3 * rng.standard_normal(images.shape)
  return (np.roll(images, 1, axis=2) + noise).astype(np.float32).astype(np.float64)


def _adaptation_data(case, rng, steps):
  batches = []
  for _ in range(steps):
    target = _images(rng, BATCH, 0.5, 1.5)
    batch = {"source": {"image": _images(rng, BATCH), "label": _labels(rng, BATCH)},
             "target": {"image": target}}
    for view in case.views:
      batch["target"][view] = _view(target, rng)
    batches.append(batch)
  return Data(batches)


def _labelled_data(case, rng, steps):
  """Fine-tuning: the labelled batches only, and the labelled split they come
  from (read in order before training by Co-Tuning and DELTA)."""
  del case
  images, labels = _images(rng, 3 * BATCH), _labels(rng, 3 * BATCH)
  batches = []
  for _ in range(steps):
    rows = rng.choice(len(images), BATCH, replace=False)
    batches.append({"source": {"image": images[rows], "label": labels[rows]}})
  return Data(batches, (images, labels))


def _target_epochs(case, rng, steps):
  """SHOT: the target split in a new order every pass, with each example's index."""
  del case
  images = _images(rng, 3 * BATCH, 0.5, 1.5)
  batches = []
  while len(batches) < steps:
    order = rng.permutation(len(images))
    for start in range(0, len(images), BATCH):
      rows = order[start:start + BATCH]
      batches.append({"target": {"image": images[rows], "index": rows.astype(np.int32)}})
  return Data(batches[:steps], (images, np.zeros(len(images), np.int32)))


def _adabn_data(case, rng, steps):
  # The target batches are read by neither step (ERM's); TLlib's loop takes them.
  data = _adaptation_data(case, rng, steps)
  # Four full evaluation batches and a partial one, which AdaBN leaves out.
  split = _images(rng, 4 * BATCH + 3, 0.5, 1.5)
  return Data(data.batches, (split, np.zeros(len(split), np.int32)))


def _multitask_data(case, rng, steps):
  data = _adaptation_data(case, rng, steps)
  for batch in data.batches:
    del batch["target"]
    batch["other"] = {"image": _images(rng, BATCH, -0.5), "label": _labels(rng, BATCH, 3)}
  return Data(data.batches)


def _label_set_data(case, rng, steps):
  """Source labels among the label space's known classes; for PADA, whose
  refreshes read it, the target split (each step's target batch is drawn
  from it)."""
  images = _images(rng, 3 * BATCH, 0.5, 1.5)
  batches = []
  for _ in range(steps):
    batches.append({"source": {"image": _images(rng, BATCH),
                               "label": _labels(rng, BATCH, case.labels.num_known)},
                    "target": {"image": images[rng.choice(len(images), BATCH, replace=False)]}})
  split = (images, np.zeros(len(images), np.int32)) if case.module == "pada" else None
  return Data(batches, split)


# The label spaces of the label-set cases, within NUM_CLASSES outputs: partial
# (two of the four source classes in the target), open-set (three known
# classes and unknown), universal (two shared, two private on each side).
_space = lambda source, target, setting: task_lib.label_space(source, target, setting=setting,
                                                              source="source", target="target")
PARTIAL = _space("0123", "01", "partial")
OPEN_SET = _space("012", "01234", "open_set")
UNIVERSAL = _space("0123", "2345", "universal")
assert PARTIAL.num_outputs == OPEN_SET.num_outputs == UNIVERSAL.num_outputs == NUM_CLASSES


@dataclasses.dataclass(frozen=True)
class MethodCase:
  """One method against its reference. `config` adjusts `configs/<module>.py:digits`
  (after the shared small network, batch and optimizer of `_config`) to the
  reference's setting; `reference(config, data, tljax_run)` builds the PyTorch
  run; `difference` names a documented difference the case runs with;
  `signal` = (what, test on tljax's metrics and final state): the method's
  own mechanism acted in the run (a confidence mask neither empty nor full,
  pseudo-labels that differ from the predictions, ...); `compare_also` adds
  what the trajectory does not hold (AdaBN's evaluation statistics, a
  restated attention)."""

  name: str
  module: str
  source: str
  reference: Callable
  config: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  data: Callable = _adaptation_data
  views: tuple[str, ...] = ()
  steps: int = STEPS
  pretrain_steps: int = 0
  frozen: str = ""
  difference: str = ""
  signal: tuple[str, Callable] | None = None
  # Prefix of the compared keys that tljax computes in float32.
  float32_state: str = ""
  # `(config, data, run, reference, final, torch_final)`: adds comparisons
  # beyond the trajectory to `final` (tljax) and `torch_final` (the reference).
  compare_also: Callable | None = None
  # The task's label space (`train.build(..., labels=)`; None: closed-set).
  labels: task_lib.LabelSpace | None = None


def _terms(**kwargs):
  """TLlib's loop (`Reference`) with this module's terms."""
  return lambda config, data, run: methods_torch.TermsRun(
      config, {}, num_classes=NUM_CLASSES, image=IMAGE, **kwargs)


def _run(cls, **kwargs):
  return lambda config, data, run: cls(config, num_classes=NUM_CLASSES, image=IMAGE, **kwargs)


# DeepDA's `get_parameters` and optimizer, on the reference side.
DEEPDA = {"backbone_lr": 0.1, "nesterov": False}


def _deepda(config):
  """DeepDA's TransferNet and optimizer: a bottleneck Linear -> ReLU, the
  backbone at 0.1x, SGD without nesterov."""
  config.model.bottleneck_norm = False
  config.param_groups = (("classifier/backbone/.*", 0.1), (".*", 1.0))
  config.optimizer.nesterov = False


def _finetune(config):
  """TLlib's task-adaptation classifier: no bottleneck; its `MultiStepLR` within the run."""
  config.model.bottleneck_dim = 0
  config.schedule.boundaries = (STEPS * 2 // 3,)


def _mixed(metric: str):
  """A confidence mask that kept some examples and dropped others."""
  return (f"0 < {metric} < 1 at some step",
          lambda run: any(0 < m[metric] < 1 for m in run.metrics))


def _attention(config, data, run):
  """DELTA's reference, trained with tljax's channel attention (see the case)."""
  attention = {name: np.asarray(value)
               for name, value in run.final.method_state["attention"].items()}
  return methods_torch.FineTuningRun(config, attention=attention, num_classes=NUM_CLASSES,
                                     image=IMAGE)


def _co_tuning(config, data, run):
  return methods_torch.FineTuningRun(config, relationship_split=data.split,
                                     num_classes=NUM_CLASSES, image=IMAGE)


def _shot(config, data, run):
  # The parity run follows tljax's schedule (see the case's difference).
  return methods_torch.SHOTRun(config, split=data.split[0], schedule_offset=0,
                               num_classes=NUM_CLASSES, image=IMAGE)


PADA_UPDATE_EVERY = 10  # TLlib: 500


def _pada(config, data, run):
  """PADA's reference, trained with tljax's class weights (see the case)."""
  class_weights = {step: np.asarray(state["class_weights"])
                   for step, state in run.refreshed.items()}
  return methods_torch.PADARun(config, split=data.split[0], class_weights=class_weights,
                               num_classes=NUM_CLASSES, image=IMAGE)


def _restated_class_weights(config, data, run, reference, final, torch_final):
  """PADA's class weights of each recomputation, tljax's and restated, as
  `state:refresh_<step>/class_weights`."""
  del config, data
  assert sorted(reference.restated) == [s for s in sorted(run.refreshed) if s], (
      sorted(reference.restated), sorted(run.refreshed))
  for step, weights in reference.restated.items():
    final[f"state:refresh_{step}/class_weights"] = np.asarray(
        run.refreshed[step]["class_weights"], np.float64)
    torch_final[f"state:refresh_{step}/class_weights"] = weights.astype(np.float64)


def _unknown_output_moved(run):
  """OSBP: the head's last ("unknown") output, which no source label
  carries, changed."""
  head = lambda state: state.params["classifier"]["head"]
  return all(np.max(np.abs(np.asarray(head(run.final)[k])[..., -1]
                           - np.asarray(head(run.initial)[k])[..., -1])) > 1e-4
             for k in ("kernel", "bias"))


def _transferability(run, state) -> np.ndarray:
  """UAN's target transferability `w_t = D'(f) - H(p) / log K` of `state` on
  fixed target-like images."""
  variables = state.variables
  images = jax.numpy.asarray(_images(np.random.default_rng(0), 4 * BATCH, 0.5, 1.5))
  features, logits = run.setup.predict(methods_base.owned(variables, methods_base.CLASSIFIER),
                                       images)
  domain_logits, _ = run.setup.ctx.apply_network("discriminator_separate", variables, features,
                                                 train=False)
  return np.asarray(losses.uan_transferability(domain_logits, logits, domain="target",
                                               class_temperature=1.0))


def _transferability_spreads(run):
  final = _transferability(run, run.final)
  return np.ptp(final) > 0.02 and np.max(np.abs(final - _transferability(run, run.initial))) > 1e-3


def _multitask(sampling):
  def configure(config):
    task = lambda name, **kw: {"name": name, "dataset": "", "split": "train",
                               "eval_split": "test", "label_map": None, "weight": 1.0, **kw}
    tasks = [task("main", num_classes=NUM_CLASSES),
             task("parity", label_map="parity", num_classes=2, weight=0.5),
             task("other", dataset="other_dataset", num_classes=3, weight=2.0)]
    if sampling == "uniform":
      del tasks[1]  # one compiled step per task: two are enough to compare
    config.method.tasks = tuple(tasks)
    config.method.sampling = sampling
  return configure


def _multitask_reference(config, data, run):
  tasks = None
  if config.method.sampling == "uniform":
    tasks = [run.setup.method.step_variant(step, run.initial.rng)
             for step in range(len(data.batches))]
  return methods_torch.MultiTaskRun(config, label_maps={"parity": lambda c: c % 2},
                                    tasks_per_step=tasks, num_classes=NUM_CLASSES, image=IMAGE)


def _adabn_reference(config, data, run):
  return Reference(config, {}, num_classes=NUM_CLASSES, image=IMAGE, source_only=True)


def _shot_config(config):
  config.total_steps = STEPS
  config.schedule.gamma = 10.0 / STEPS  # SHOT: lr0 (1 + 10 i / max_iter)^-0.75


def _shot_changes_labels(run):
  # Pseudo-labels from the clustering that differ from the arg-max predictions.
  return any(m["pseudo_label_agreement"] < 1 for m in run.metrics)


def _adabn_statistics(config, data, run, reference, final, torch_final):
  """AdaBN's evaluation statistics: tljax's (the trainer's
  `recompute_batch_statistics` over the split), and PyTorch's over the same
  full batches, as `state:adabn/<path>`."""
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  variables = run.setup.method.eval_variables(run.setup.ctx, run.final, lambda v: (
      train.recompute_batch_statistics(run.setup, v, _domain(*data.split), config, sharding)))
  for path, value in flax.traverse_util.flatten_dict(variables["batch_stats"]).items():
    final["state:adabn/" + "/".join(path)] = np.asarray(value)
  full = len(data.split[0]) // config.eval_batch_size
  batches = [torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2)))
             for b in np.split(data.split[0][:full * config.eval_batch_size], full)]
  statistics = methods_torch.adabn_statistics(reference.world["classifier"], batches)
  for name, (mean, var) in statistics.items():
    torch_final[f"state:adabn/{name.replace('.', '/')}/mean"] = mean.numpy()
    torch_final[f"state:adabn/{name.replace('.', '/')}/var"] = var.numpy()


def _restated_attention(config, data, run, reference, final, torch_final):
  """DELTA's channel attention restated from tljax's procedure (not the one
  the reference run was given), in place of the reference's state."""
  del config, run, final
  for name, value in reference.channel_attention(*data.split).items():
    torch_final[f"state:attention/{name}"] = value


METHOD_CASES = [
    MethodCase("adda", "adda", "TLlib adda.py", _run(methods_torch.ADDARun),
               lambda config: config.method.update(pretrain_steps=10, pretrain_lr_scale=0.5,
                                                   hidden_sizes=(HIDDEN, HIDDEN),
                                                   grl_max_steps=GRL_MAX_STEPS),
               pretrain_steps=10),
    MethodCase("mcd", "mcd", "TLlib mcd.py", _run(methods_torch.MCDRun),
               # num_k 2 of TLlib's 4: the same loop, a smaller step to compile.
               lambda config: (config.model.update(bottleneck_dim=0, head_hidden=HIDDEN),
                               config.method.update(num_k=2))),
    MethodCase("bnm", "bnm", "DeepDA loss_funcs/bnm.py, main.py", _terms(**DEEPDA), _deepda),
    MethodCase("dsan", "dsan", "DeepDA loss_funcs/lmmd.py, main.py",
               _terms(dsan_gamma=10.0, **DEEPDA),
               lambda config: (_deepda(config), config.method.update(trade_off_warmup=20)),
               difference="LambdaSheduler gamma 10 (the DSAN authors' ramp, which tljax "
               "follows; DeepDA's default is 1)"),
    MethodCase("ddc", "ddc", "TLlib MultipleKernelMaximumMeanDiscrepancy, one GaussianKernel",
               _terms(),
               difference="tljax's DDC is one Gaussian kernel with TLlib's estimator; DeepDA's "
               "DDC/DAN MMDLoss sums five kernels in the biased estimate"),
    MethodCase("deep_coral", "deep_coral", "TLlib CorrelationAlignmentLoss", _terms()),
    MethodCase("cmd", "cmd", "CMD authors' mmatch (domain_regularizer.py)", _terms()),
    MethodCase("entropy_min", "entropy_min", "TLlib entropy", _terms()),
    MethodCase("pseudo_label", "pseudo_label", "TLlib ConfidenceBasedSelfTrainingLoss", _terms(),
               lambda config: config.method.update(threshold=PSEUDO_LABEL_THRESHOLD),
               signal=_mixed("pseudo_label_ratio")),
    MethodCase("source_only_joint_bn", "source_only_joint_bn", "TLlib dann.py without its term",
               _terms()),
    MethodCase("mean_teacher", "mean_teacher", "TLlib self_ensemble.py",
               _run(methods_torch.MeanTeacherRun),
               lambda config: config.method.update(threshold=PSEUDO_LABEL_THRESHOLD),
               views=("image_teacher",), signal=_mixed("confident_ratio"),
               difference="tljax's digits optimizer (SGD); TLlib's example uses Adam, with "
               "which the run agrees to 1.2e-9 only: Adam divides each gradient by its own "
               "size, and that of the last backbone BatchNorm's bias, which the bottleneck's "
               "BatchNorm nearly cancels, carries rounding to the update"),
    MethodCase("fixmatch", "fixmatch", "TLlib fixmatch.py", _run(methods_torch.FixMatchRun),
               lambda config: config.method.update(threshold=PSEUDO_LABEL_THRESHOLD),
               views=("image_strong",), signal=_mixed("pseudo_label_ratio")),
    MethodCase("shot", "shot", "SHOT object/image_target.py", _shot, _shot_config,
               data=_target_epochs, frozen="classifier/head/.*",
               difference="learning rate of step i at i (SHOT's lr_scheduler: i + 1)",
               signal=("pseudo-labels differ from the predictions", _shot_changes_labels)),
    MethodCase("adabn", "adabn", "PyTorch BatchNorm(momentum=None), training mode",
               _adabn_reference, data=_adabn_data, compare_also=_adabn_statistics,
               difference="the trailing partial evaluation batch is left out, as tljax does"),
    MethodCase("finetune", "finetune", "TLlib task_adaptation erm.py",
               _run(methods_torch.FineTuningRun), _finetune, data=_labelled_data),
    MethodCase("l2_sp", "l2_sp", "TLlib delta.py --regularization-type l2_sp",
               _run(methods_torch.FineTuningRun), _finetune, data=_labelled_data),
    MethodCase("delta", "delta", "TLlib delta.py --regularization-type feature_map", _attention,
               lambda config: (_finetune(config),
                               config.method.update(regularization="feature_map")),
               data=_labelled_data),
    MethodCase("delta_attention", "delta", "TLlib delta.py (attention_feature_map)", _attention,
               _finetune, data=_labelled_data, float32_state="state:attention/",
               compare_also=_restated_attention,
               signal=("channels weighted unequally", lambda run: any(
                   np.ptp(np.asarray(a)) > 1e-3 * np.max(a)
                   for a in run.final.method_state["attention"].values())),
               difference="channel attention as tljax computes it (a classifier on the "
               "starting features, as the paper describes; TLlib's calculate_channel_attention "
               "trains the whole network first): restated, it matches tljax's to float32 "
               "rounding; the training runs on tljax's"),
    MethodCase("bss", "bss", "TLlib bss.py", _run(methods_torch.FineTuningRun), _finetune,
               data=_labelled_data),
    MethodCase("co_tuning", "co_tuning", "TLlib co_tuning.py", _co_tuning, _finetune,
               data=_labelled_data),
    MethodCase("pada", "pada", "TLlib pada.py, tllib/alignment/pada.py", _pada,
               lambda config: config.method.update(update_every=PADA_UPDATE_EVERY,
                                                   hidden_sizes=(HIDDEN, HIDDEN),
                                                   grl_max_steps=GRL_MAX_STEPS),
               data=_label_set_data, labels=PARTIAL, float32_state="state:refresh_",
               compare_also=_restated_class_weights,
               signal=("class weights recomputed away from ones",
                       lambda run: np.min(run.final.method_state["class_weights"]) < 0.99),
               difference="class weights recomputed before steps 10, 20 from the parameters "
               "then, over the evaluation view of the whole target split (TLlib: inside the "
               "step before, from that step's parameters, over its training loader); "
               "update_every 10 of TLlib's 500, so that they change within the run; tljax "
               "computes them from float32 logits in float32: restated, they match tljax's to "
               "float32 rounding (a unit in the last place); the training runs on tljax's"),
    MethodCase("iwan", "iwan", "TLlib iwan.py, tllib/reweight/iwan.py",
               _run(methods_torch.IWANRun),
               lambda config: config.method.iwan.update(hidden_sizes=(HIDDEN, HIDDEN),
                                                        grl_max_steps=GRL_MAX_STEPS),
               data=_label_set_data, labels=PARTIAL,
               signal=("importance weights unequal", lambda run: any(
                   m["iwan/importance_weight_max"] > 1.01 for m in run.metrics))),
    MethodCase("osbp", "osbp", "TLlib osbp.py, tllib/alignment/osbp.py",
               _run(methods_torch.OSBPRun), data=_label_set_data, labels=OPEN_SET,
               signal=("the unknown output trained", _unknown_output_moved)),
    MethodCase("uan", "uan", "UAN authors' main.py, net.py, lib.py", _run(methods_torch.UANRun),
               lambda config: (config.model.update(bottleneck_norm=False, bottleneck_relu=False),
                               config.method.update(hidden_sizes=(HIDDEN, HIDDEN),
                                                    grl_max_calls=2 * GRL_MAX_STEPS)),
               data=_label_set_data, labels=UNIVERSAL,
               signal=("target transferability that differs between examples and moved",
                       _transferability_spreads)),
    MethodCase("multitask", "multitask", "one trunk + 3 heads", _multitask_reference,
               _multitask("all"), data=_multitask_data),
    MethodCase("multitask_uniform", "multitask", "one trunk + 2 heads, one task per step",
               _multitask_reference, _multitask("uniform"), data=_multitask_data,
               difference="every head's momentum and weight decay act at every step, also when "
               "its task was not drawn (the reference's zero_grad(set_to_none=False); PyTorch's "
               "default None gradients leave such a head alone)"),
]


@pytest.mark.parametrize("case", METHOD_CASES, ids=[c.name for c in METHOD_CASES])
def test_method_matches_reference(case):
  config = _config(case)
  seed = zlib.crc32(case.name.encode())
  data = case.data(case, np.random.default_rng(seed), case.steps)
  snapshot_steps = (case.pretrain_steps,) if case.pretrain_steps else ()
  run = _run_method(config, data, snapshot_steps=snapshot_steps, labels=case.labels)

  reference = case.reference(config, data, run)
  reference.load({c: run.initial.variables[c] for c in ("params", "batch_stats")
                  if c in run.initial.variables})
  start = reference.variables()
  if isinstance(reference, methods_torch.Run):
    torch_losses, torch_snapshots = reference.run(data.batches, run.masks, snapshot_steps)
  else:
    assert not any(run.masks), "the Reference loop draws no dropout masks of tljax's here"
    torch_losses, torch_snapshots = reference.run(data.batches, [{}] * len(data.batches))
  final, torch_final = run.snapshots[case.steps], torch_snapshots[case.steps]

  if case.compare_also:
    case.compare_also(config, data, run, reference, final, torch_final)

  loss_diff = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(run.losses, torch_losses)]
  assert set(final) == set(torch_final), set(final) ^ set(torch_final)
  groups = {kind: [k for k in final if k.startswith(kind + ":")]
            for kind in ("params", "batch_stats", "state")}
  diff = {kind: _relative_differences(final, torch_final, keys) for kind, keys in groups.items()}
  moved = _relative_differences(torch_final, start, groups["params"])
  frozen = lambda key: case.frozen and matches(case.frozen, key[len("params:"):])
  worst = lambda d: max(d, key=d.get) if d else None
  largest = lambda d: max(d.values()) if d else float("nan")
  RESULTS[case.name] = {"steps": case.steps, "loss": max(loss_diff), "params": largest(diff["params"]),
                        "stats": largest(diff["batch_stats"]), "state": largest(diff["state"]),
                        "moved": min(v for k, v in moved.items() if not frozen(k)),
                        "source": case.source, "difference": case.difference}
  assert max(loss_diff) < TOLERANCE, (np.argmax(loss_diff), run.losses, torch_losses)
  for kind, d in diff.items():
    for key, value in d.items():
      loose = case.float32_state and key.startswith(case.float32_state)
      assert value < (FLOAT32_TOLERANCE if loose else TOLERANCE), (kind, key, value)
  # Not vacuous: every trainable parameter moved, the frozen ones did not ...
  for key, change in moved.items():
    assert change == 0 if frozen(key) else change > 1e-4, (key, change)
  # ... and the method's own mechanism acted.
  if case.signal:
    what, test = case.signal
    assert test(run), f"{case.name}: expected {what}"
  for step in snapshot_steps:
    # TLlib's separate pre-training run ends where tljax's pre-training phase does.
    keys = [k for k in run.snapshots[step] if ":classifier/" in k]
    pretrain_diff = _relative_differences(run.snapshots[step], torch_snapshots[step], keys)
    RESULTS[case.name]["pretrain"] = max(pretrain_diff.values())
    assert max(pretrain_diff.values()) < TOLERANCE, worst(pretrain_diff)


# Where a method's references disagree (paper and code, or two codes): which one
# tljax's default follows (also in each method's docstring).
DEFAULT_FOLLOWS = {
    "adda": "TLlib's code (`objective='tllib'`: DANN's loss behind a warm-started reversal); "
            "the paper's alternating objective (Eq. 8-9) is `objective='paper'`",
    "bnm": "the authors' code and DeepDA (the mean singular value); the paper's Eq. 9 divides "
           "the nuclear norm by the batch size (`normalisation='batch'`)",
    "dsan": "the DSAN authors' code (ramp `2 / (1 + exp(-10 p)) - 1`); DeepDA's LambdaSheduler "
            "defaults to gamma 1",
    "ddc": "TLlib's MMD estimator with one Gaussian kernel: neither the paper (a linear kernel) "
           "nor DeepDA (five kernels, biased estimate)",
    "deep_coral": "TLlib's code (mean and covariance differences, averaged); the paper's "
                  "`||C_s - C_t||^2 / 4d^2` is `form='paper'`",
    "cmd": "the paper and the authors' code agree for bounds [0, 1], the default",
    "mean_teacher": "TLlib's code, which evaluates the student; the paper reports the teacher "
                    "(`evaluate='teacher'`)",
    "shot": "the authors' object-recognition code (a centroid only for classes predicted at "
            "least once); their digit script keeps every centroid",
    "l2_sp": "TLlib's trade-offs (alpha 0.01); the paper's alpha is 0.1",
    "delta_attention": "TLlib's losses; the channel attention as the paper describes it",
}
# The heading of the section `experiments/parity_full_length.py` writes below the table.
FULL_LENGTH_SECTION = "## Full-length runs: ADDA and SHOT beside their PyTorch restatements"
# The TLlib example each `CASES` entry restates.
TLLIB_EXAMPLES = {"source_only": "erm.py", "dann": "dann.py", "dan": "dan.py", "jan": "jan.py",
                  "cdan": "cdan.py", "cdan_e": "cdan.py --entropy", "mdd": "mdd.py",
                  "mcc": "mcc.py", "afn": "afn.py", "bsp": "bsp.py",
                  "dann_finetune": "dann.py, fine-tuning groups"}


# The files whose cases join this table: each keeps `CASES` (with `module`,
# the config each case runs) and `RESULTS` (this file's row fields).
PARITY_FILES = ("test_dg_parity", "test_multisource_parity", "test_regression_parity",
                "test_ssl_parity")
TABLE_COMMAND = ("TLJAX_PARITY_TABLE=experiments/results/trajectory_parity.md pytest -n 0 "
                 + " ".join(f"tests/{name}.py" for name in ("test_trajectory", *PARITY_FILES)))


def _parity_modules() -> list[Any]:
  return [importlib.import_module(name) for name in PARITY_FILES]


# The configs in configs/ without a row in this table, and why (each config
# is a row's module or named here: `test_every_config_has_a_row_or_a_reason`).
WITHOUT_A_ROW = [
    (("cdan_mcc", "combine"), "sums of terms that each have a row"),
    (("target_oracle", "linear_probe"),
     "source_only's step on labelled target data, or on cached features"),
    (("default",), "the shared defaults, no method"),
]


def test_every_config_has_a_row_or_a_reason():
  configs = {os.path.basename(p)[:-3] for p in glob.glob(str(REPO / "configs" / "*.py"))} - {
      "__init__"}
  with_rows = {c.module for c in CASES} | {c.module for c in METHOD_CASES} | {
      c.module for module in _parity_modules() for c in module.CASES}
  named = [n for names, _ in WITHOUT_A_ROW for n in names]
  assert len(named) == len(set(named)) and not set(named) & with_rows, set(named) & with_rows
  assert configs == with_rows | set(named), configs ^ (with_rows | set(named))


def write_table(path: str) -> None:
  """The table of this file's cases and `PARITY_FILES`' (all run in this
  process: a table missing some rows is not written)."""
  others = [sys.modules.get(name) for name in PARITY_FILES]
  missing = [name for name, module in zip(PARITY_FILES, others)
             if module is None or not module.RESULTS]
  if not RESULTS or missing:
    print(f"\nNot writing {path}: no results from {', '.join(missing) or 'test_trajectory'}; "
          f"run {TABLE_COMMAND}")
    return
  results = dict(RESULTS)
  for module in others:
    results.update(module.RESULTS)
  lines = [
      "## Trajectory parity with the reference implementations",
      "",
      f"`{TABLE_COMMAND}`:",
      "tljax (`train.build`, jitted step) against a PyTorch restatement of each method's",
      "reference code (TLlib's examples and losses, DeepDA, the SHOT, CMD, UAN, M3SDA and",
      "MFSAN authors' code; `benchmarks/torch_reference.py`, `tests/torch_reference_methods.py`,",
      "and, for domain generalisation, multi-source, regression and semi-supervised learning,",
      "the restatements in",
      f"{', '.join(f'`tests/{name}.py`' for name in PARITY_FILES)}), same",
      "initial weights, batches, views and dropout masks, float64 on both sides; two-block",
      "small CNN on 8x8",
      f"images, bottleneck {BOTTLENECK} (none where the reference has none), {NUM_CLASSES} classes, "
      f"{BATCH} examples per domain.",
      "Largest relative difference (max |tljax - torch| / max |torch| per tensor, worst tensor)",
      "after the last step, and of the loss over all steps; 'method state' is what tljax keeps",
      "besides the variables (a mean teacher, pseudo-labels, a starting point, a category",
      "relationship, channel attention, AdaBN's recomputed statistics, PADA's class weights);",
      "'moved' is the smallest relative change of a trainable tensor over the run (the",
      "comparison is not vacuous).",
      "",
      "| case | reference | steps | loss | parameters | BatchNorm statistics | method state | moved |",
      "|---|---|---|---|---|---|---|---|",
  ]
  notes = []
  for name, r in results.items():
    label = name + (f" (pre-training: {r['pretrain']:.1e})" if "pretrain" in r else "")
    if r.get("difference"):
      notes.append(f"{len(notes) + 1}. {name}: {r['difference']}.")
      label += f" [{len(notes)}]"
    source = r.get("source") or f"TLlib {TLLIB_EXAMPLES.get(name, '')}"
    state = r.get("state", float("nan"))
    lines.append(f"| {label} | {source} | {r['steps']} | {r['loss']:.1e} | {r['params']:.1e} | "
                 f"{r['stats']:.1e} | {state:.1e} | {r['moved']:.1e} |".replace("nan", "–"))
  if notes:
    lines += ["", "Documented differences the cases run with:", ""] + notes
  follows_all = dict(DEFAULT_FOLLOWS)
  for module in others:
    follows_all.update(getattr(module, "DEFAULT_FOLLOWS", {}))
  follows = [f"- {name}: {text}." for name, text in follows_all.items() if name in results]
  if follows:
    lines += ["", "Where the references disagree, the version tljax's default follows:", ""]
    lines += follows
  lines += ["", "Configs without a row of their own:", ""]
  lines += [f"- {', '.join(f'`{n}.py`' for n in names)}: {why}." for names, why in WITHOUT_A_ROW]
  # The full-length comparisons below the table (experiments/parity_full_length.py) stay.
  tail = ""
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    if FULL_LENGTH_SECTION in previous:
      tail = "\n" + FULL_LENGTH_SECTION + previous.split(FULL_LENGTH_SECTION, 1)[1]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n" + tail)
