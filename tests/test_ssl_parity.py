"""First steps of the semi-supervised methods against PyTorch restatements of
TLlib's: its semi-supervised examples' training loops
(`examples/semi_supervised_learning/image_classification/<method>.py`) and
modules (`tllib/self_training/`: `ConfidenceBasedSelfTrainingLoss`,
`L2ConsistencyLoss`, `sigmoid_warm_up`, `StrongWeakConsistencyLoss`,
`DynamicThresholdingModule`, `WorstCaseEstimationLoss` with DST's heads and
`WarmStartGradientReverseLayer`, `SelfTuning` with its queue and key encoder,
`EMATeacher` and `update_bn`; Noisy Student's soft `CrossEntropyLoss` and
`calc_teacher_output`), written here from TLlib's code.

Both sides start from the same weights (tljax's initial variables loaded into
`benchmarks/torch_reference.py`'s `Classifier`), see the same batches (every view given
as data) and compute in float64 (JAX x64, torch `.double()`), over a few steps
so that the state a method keeps (FlexMatch's record, DebiasMatch's mean,
Self-Tuning's queue and key encoder, the teacher, Noisy Student's teacher
predictions) is exercised. The network is a two-block `small_cnn` on 8x8
images, a bottleneck of 12 without dropout (the semi-supervised tasks'
dropout is the classifier's own, checked by test_trajectory.py; Noisy
Student keeps it, its student's noise), 4 classes, 8 examples per batch;
thresholds are lowered so that masks are mixed. DST's heads and Noisy
Student's bottleneck drop the units tljax drops (its masks, read from the
same step). Noisy Student's teacher is a fixed network of other weights
(drawn anew, its running statistics off 0 and 1) saved as a checkpoint, which
tljax reads as a finished run's and PyTorch loads. The optimizer on both
sides is SGD with Nesterov momentum and weight decay under
`lr (1 + gamma step)^-decay` (TLlib's `exp` schedule).

Compared: every step's loss, and after the last step every parameter, the
method's state and, where both sides pass the batches through the network in
the same order, every BatchNorm running statistic. tljax's FixMatch,
pseudo-label and mean teacher keep their domain-adaptation pass order (the
labelled strong view last), so for them the statistics are not compared.
`RESULTS` keeps the measurements in the form of `test_trajectory.py`'s table.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib
import sys
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from tljax import models, train
from tljax.data import registry

sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install tljax[test])")
from benchmarks import torch_reference as ref  # noqa: E402  pylint: disable=g-import-not-at-top

F = torch.nn.functional
NUM_CLASSES = 4
BATCH = 8
IMAGE = (8, 8, 3)
WIDTHS = (4, 4)
BOTTLENECK = 12
UNLABELLED = 12  # unlabelled examples (FlexMatch's record), indexed by the batches
STEPS = 4
LR, GAMMA, DECAY, MOMENTUM, WEIGHT_DECAY = 0.01, 0.01, 0.75, 0.9, 5e-4
TOLERANCE = 1e-9

RESULTS: dict[str, dict[str, Any]] = {}


pytestmark = pytest.mark.usefixtures("float64_parity")


# ----------------------------------------------------------------------------
# Cases.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One TLlib semi-supervised example: `method` fields over `configs/<name>.py:ssl_digits`."""

  name: str
  method: dict
  compare_stats: bool = True
  dropout: bool = False
  # `config.model` fields (after the shared small network).
  model: dict = dataclasses.field(default_factory=dict)
  # A documented difference the case runs with (as test_trajectory.py's notes).
  difference: str = ""

  @property
  def source(self) -> str:
    return "TLlib semi-supervised " + ("erm.py" if self.name == "source_only" else
                                       f"{self.name}.py")

  @property
  def module(self) -> str:  # the config it runs (test_trajectory.py's table)
    return self.name


CASES = [
    Case("source_only", {}),
    Case("pi_model", {"trade_off": 1.0, "warm_up_steps": STEPS, "warm_up_interval": 1}),
    Case("uda", {"threshold": 0.3}),
    Case("fixmatch", {"threshold": 0.3}, compare_stats=False),
    Case("pseudo_label", {"threshold": 0.3}, compare_stats=False),
    Case("mean_teacher", {"trade_off": 1.0, "warm_up_steps": STEPS, "warm_up_interval": 1},
         compare_stats=False),
    Case("flexmatch", {"threshold": 0.3}),
    Case("debiasmatch", {"threshold": 0.3, "momentum": 0.9}),
    Case("dst", {"threshold": 0.3, "width": 16, "grl_max_steps": 10, "grl_hi": 1.0},
         dropout=True),
    Case("self_tuning", {"projection_dim": 6, "queue_size": 2, "momentum": 0.9,
                         "temperature": 0.5}),
    # TLlib's rounds: temperature 0.5, trade-offs 1 and 0.1 (configs/noisy_student.py).
    Case("noisy_student", {}, model={"bottleneck_dropout": 0.5}, dropout=True,
         difference="the teacher's predictions on the evaluation preprocessing of each "
         "unlabelled image (TLlib: on a weak augmentation drawn once), kept in float32 "
         "(tljax's evaluation predictions): the reference rounds its float64 teacher "
         "outputs to float32 likewise"),
]


def _config(case: Case) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{case.name}").get_config("ssl_digits")
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"widths": WIDTHS, "kernel_sizes": (3,) * len(WIDTHS), "conv_impl": "xla"})
  config.model.dtype = "float64"
  config.model.bottleneck_dim = BOTTLENECK
  config.model.bottleneck_dropout = 0.0
  config.model.update(case.model)
  config.batch_size = BATCH
  config.optimizer.learning_rate = LR
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY
  config.schedule.gamma = GAMMA
  config.schedule.power = DECAY
  config.method.update(case.method)
  return config


def _batches(seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  images = lambda scale=1.0: rng.standard_normal((BATCH, *IMAGE)) * scale
  out = []
  for _ in range(STEPS):
    source = {"image": images(), "image_strong": images(1.5), "image_key": images(1.2),
              "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}
    target = {"image": images() + 0.5, "image_strong": images(1.5) + 0.5,
              "image_second": images() + 0.5, "image_teacher": images() + 0.5,
              "image_key": images(1.2) + 0.5,
              # Distinct within a batch; batches share examples.
              "index": rng.permutation(UNLABELLED)[:BATCH].astype(np.int32)}
    out.append({"source": source, "target": target})
  return out


# ----------------------------------------------------------------------------
# The tljax side.
# ----------------------------------------------------------------------------


def _dropout_masks(setup):
  """The units each dropout layer keeps in the step (by module path, in call
  order), from the method's step run with the step's key."""

  def masks(state, batch):
    calls: dict[str, list[jax.Array]] = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
        calls.setdefault("/".join(context.module.scope.path), []).append(out != 0)
      return out

    rng = jax.random.fold_in(state.rng, state.step)
    with nn.intercept_methods(record):
      setup.method.train_step(setup.ctx, state, batch, rng)
    return calls

  return jax.jit(masks)


def _run_tljax(config, case, batches, unlabelled: np.ndarray | None = None):
  """tljax's jitted step over `batches`, with the trainer's refreshes over the
  `unlabelled` split (uint8 images, `train.predict_all`: its evaluation
  preprocessing and batches) before the steps `Method.refresh_interval` names."""
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  setup = train.build(config, NUM_CLASSES, mesh, IMAGE, num_target_examples=UNLABELLED)
  state = setup.state
  initial = jax.device_get(state)
  record_masks = _dropout_masks(setup) if case.dropout else None
  losses, masks = [], []
  method = setup.method
  interval = method.refresh_interval(-(-UNLABELLED // BATCH))
  if interval:
    assert unlabelled is not None and len(unlabelled) == UNLABELLED
    domain = registry.Domain("parity", "train", [{"image": image, "label": 0}
                                                 for image in unlabelled],
                             tuple(str(c) for c in range(NUM_CLASSES)))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def predict(variables):
      out = train.predict_all(setup, variables, domain, config, sharding)
      return out.features, out.logits

  for step, batch in enumerate(batches):
    if interval and step % interval == 0:
      state = method.refresh(setup.ctx, state, predict)
    views = {"source": ("image", "label", *method.source_views),
             "target": ("image", "index", *method.target_views)}
    batch = {d: {k: jax.numpy.asarray(v) for k, v in batch[d].items() if k in views[d]}
             for d in batch}
    masks.append(jax.device_get(record_masks(state, batch)) if case.dropout else {})
    state, metrics = setup.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return initial, losses, masks, jax.device_get(state)


def _variables(tree, collection: str) -> dict[str, np.ndarray]:
  """`{collection:path: array}` with flax's `kernel`/`scale` named `weight`."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(tree).items():
    leaf = "weight" if path[-1] in ("kernel", "scale") else path[-1]
    out[collection + ":" + "/".join((*path[:-1], leaf))] = np.asarray(value, np.float64)
  return out


def _teacher_run(config, directory) -> tuple[str, dict]:
  """Noisy Student's teacher: the classifier's variables drawn anew with
  numpy (He-normal weights, small biases, BatchNorm's affine parameters and
  running statistics off 1 and 0, so that its evaluation-mode BatchNorm
  acts; initialising through flax would compile for seconds), saved as a
  finished run's checkpoint. Returns the checkpoint's path
  (`<directory>/checkpoints/0`, what `config.method.teacher` names) and the
  variables."""
  classifier = models.create_classifier(config.model, NUM_CLASSES)
  shapes = jax.eval_shape(functools.partial(classifier.init, train=False),
                          {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                          np.zeros((2, *IMAGE)))
  kernels = {path[:-1]: leaf.shape for path, leaf in
             flax.traverse_util.flatten_dict(shapes["params"]).items() if path[-1] == "kernel"}
  rng = np.random.default_rng(17)

  def draw(path, leaf):
    fan_in = np.prod(kernels[path[:-1]][:-1]) if path[:-1] in kernels else 0
    if path[-1] == "kernel":
      return rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)
    return {"bias": lambda: 0.1 * rng.standard_normal(leaf.shape),
            "scale": lambda: rng.uniform(0.5, 1.5, leaf.shape),
            "mean": lambda: 0.3 * rng.standard_normal(leaf.shape),
            "var": lambda: rng.uniform(0.5, 2.0, leaf.shape)}[path[-1]]()

  variables = {c: flax.traverse_util.unflatten_dict(
      {path: draw(path, leaf) for path, leaf in flax.traverse_util.flatten_dict(shapes[c]).items()})
               for c in ("params", "batch_stats")}
  manager = ocp.CheckpointManager(str(directory / "checkpoints"))
  manager.save(0, args=ocp.args.StandardSave({
      "params": {"classifier": variables["params"]},
      "model_state": {"batch_stats": {"classifier": variables["batch_stats"]}}}))
  manager.wait_until_finished()
  manager.close()
  return str(directory / "checkpoints" / "0"), variables


# ----------------------------------------------------------------------------
# The PyTorch side: TLlib's modules and loops.
# ----------------------------------------------------------------------------


def _load(module, variables: dict, prefix: str = "") -> None:
  """tljax's `variables` (`params`, `batch_stats`) into the PyTorch `module`,
  whose names are tljax's paths after `prefix`."""
  state = module.state_dict()
  for collection in ("params", "batch_stats"):
    for path, value in flax.traverse_util.flatten_dict(variables[collection]).items():
      key = prefix + ref.torch_key(collection, path)
      assert key in state, key
      state[key] = torch.from_numpy(ref.to_torch(np.array(value), path[-1])).double()
  module.load_state_dict(state)


def cross_entropy(y, labels):
  return F.cross_entropy(y, labels)


def confidence_based_self_training_loss(threshold, y, y_target):
  """TLlib's `ConfidenceBasedSelfTrainingLoss.forward`."""
  confidence, pseudo_labels = F.softmax(y_target.detach(), dim=1).max(dim=1)
  mask = (confidence > threshold).float().to(y.dtype)
  return (F.cross_entropy(y, pseudo_labels, reduction="none") * mask).mean(), mask, pseudo_labels


def soft_cross_entropy(y, labels):
  """TLlib's `tllib.vision.models.reid.loss.CrossEntropyLoss` (Noisy Student's
  self-training criterion): the cross-entropy of `softmax(y)` to `softmax(labels)`."""
  log_prob = F.log_softmax(y, dim=1)
  return (-F.softmax(labels, dim=1).detach() * log_prob).sum(dim=1).mean()


def digits_eval_preprocess(images: np.ndarray) -> np.ndarray:
  """tljax's `digits` evaluation preprocessing (TLlib's digits `ToTensor` and
  `Normalize(0.5, 0.5)`): uint8 -> float32 `(x / 255 - 0.5) / 0.5`."""
  return ((images / 255.0 - 0.5) / 0.5).astype(np.float32)


def l2_consistency_loss(p1, p2, reduction="mean"):
  """TLlib's `L2ConsistencyLoss`."""
  loss = ((p1 - p2) ** 2).sum(dim=1)
  return loss.mean() if reduction == "mean" else loss.sum()


def sigmoid_warm_up(current_epoch, warm_up_epochs):
  """TLlib's `sigmoid_warm_up`."""
  if warm_up_epochs == 0:
    return 1.0
  current_epoch = np.clip(current_epoch, 0.0, warm_up_epochs)
  process = 1.0 - current_epoch / warm_up_epochs
  return float(np.exp(-5.0 * process * process))


def strong_weak_consistency_loss(threshold, temperature, y_strong, y):
  """TLlib's `StrongWeakConsistencyLoss.forward`."""
  confidence, _ = F.softmax(y.detach(), dim=1).max(dim=1)
  mask = (confidence > threshold).to(y.dtype)
  log_prob = F.log_softmax(y_strong / temperature, dim=1)
  con_loss = F.kl_div(log_prob, F.softmax(y.detach(), dim=1), reduction="none").sum(dim=1)
  return (con_loss * mask).sum() / max(mask.sum(), 1)


class DynamicThresholdingModule:
  """TLlib's `DynamicThresholdingModule` (mapping `x / (2 - x)`)."""

  def __init__(self, threshold, warmup, num_classes, n_unlabeled_samples):
    self.threshold, self.warmup = threshold, warmup
    self.num_classes, self.n = num_classes, n_unlabeled_samples
    self.net_outputs = torch.full((n_unlabeled_samples,), -1, dtype=torch.long)

  def get_threshold(self, pseudo_labels):
    pseudo_counter = collections.Counter(self.net_outputs.tolist())
    if max(pseudo_counter.values()) == self.n:
      status = torch.zeros(self.num_classes, dtype=torch.float64)
    else:
      if not self.warmup and -1 in pseudo_counter.keys():
        pseudo_counter.pop(-1)
      max_num = max(pseudo_counter.values())
      status = torch.tensor([pseudo_counter[c] / max_num for c in range(self.num_classes)],
                            dtype=torch.float64)
    x = status[pseudo_labels]
    return self.threshold * x / (2 - x)

  def update(self, idxes, selected_mask, pseudo_labels):
    if idxes[selected_mask == 1].nelement() != 0:
      self.net_outputs[idxes[selected_mask == 1]] = pseudo_labels[selected_mask == 1]


def worst_case_estimation_loss(eta_prime, y_l, y_l_adv, y_u, y_u_adv):
  """TLlib's `WorstCaseEstimationLoss.forward`."""
  shift_log = lambda x: torch.log(torch.clamp(x + 1e-6, max=1.0))
  loss_l = eta_prime * F.cross_entropy(y_l_adv, y_l.max(dim=1)[1])
  loss_u = F.nll_loss(shift_log(1.0 - F.softmax(y_u_adv, dim=1)), y_u.max(dim=1)[1])
  return loss_l + loss_u


class SelfTuningReference(torch.nn.Module):
  """TLlib's `SelfTuning` over an encoder `(x) -> (h, y)`: the key encoder a
  copy, its parameters moved by momentum at every forward, the queue filled
  example by example."""

  def __init__(self, encoder_q, encoder_k, queue, num_classes, K, m, T):
    super().__init__()
    self.encoder_q, self.encoder_k = encoder_q, encoder_k
    self.queue_list = queue
    self.queue_ptr = torch.zeros(num_classes, dtype=torch.long)
    self.num_classes, self.K, self.m, self.T = num_classes, K, m, T
    for p in self.encoder_k.parameters():
      p.requires_grad = False

  @torch.no_grad()
  def _momentum_update_key_encoder(self):
    for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
      param_k.data = param_k.data * self.m + param_q.data * (1. - self.m)

  @torch.no_grad()
  def _dequeue_and_enqueue(self, h, label):
    batch_size = h.shape[0]
    ptr = int(self.queue_ptr[label])
    real_ptr = ptr + label * self.K
    self.queue_list[:, real_ptr:real_ptr + batch_size] = h.T
    self.queue_ptr[label] = (ptr + batch_size) % self.K

  def forward(self, im_q, im_k, labels):
    batch_size = im_q.size(0)
    h_q, y_q = self.encoder_q(im_q)
    with torch.no_grad():
      self._momentum_update_key_encoder()
      h_k, _ = self.encoder_k(im_k)
    logits_pos = torch.einsum("nl,nl->n", [h_q, h_k]).unsqueeze(-1)
    cur_queue_list = self.queue_list.clone().detach()
    logits_neg_list, logits_pos_list = [], []
    for i in range(batch_size):
      neg_sample = torch.cat([cur_queue_list[:, 0:labels[i] * self.K],
                              cur_queue_list[:, (labels[i] + 1) * self.K:]], dim=1)
      pos_sample = cur_queue_list[:, labels[i] * self.K: (labels[i] + 1) * self.K]
      logits_neg_list.append(torch.einsum("nl,lk->nk", [h_q[i:i + 1], neg_sample]))
      logits_pos_list.append(torch.einsum("nl,lk->nk", [h_q[i:i + 1], pos_sample]))
      self._dequeue_and_enqueue(h_k[i:i + 1], labels[i])
    pgc_logits = torch.cat([logits_pos, torch.cat(logits_pos_list), torch.cat(logits_neg_list)],
                           dim=1)
    pgc_logits = torch.nn.LogSoftmax(dim=1)(pgc_logits / self.T)
    pgc_labels = torch.zeros([batch_size, 1 + self.K * self.num_classes], dtype=h_q.dtype)
    pgc_labels[:, 0:self.K + 1].fill_(1.0 / (self.K + 1))
    return pgc_logits, pgc_labels, y_q


class Encoder(torch.nn.Module):
  """TLlib's Self-Tuning `Classifier` in training mode: `(normalize(projector(f)), head(f))`."""

  def __init__(self, classifier, projector):
    super().__init__()
    self.classifier, self.projector = classifier, projector

  def forward(self, x):
    y, f = self.classifier(x)
    return F.normalize(self.projector(f), dim=1), y


class Torch:
  """The world of modules (`classifier`, `method/<network>`), loaded from
  tljax's initial variables, and TLlib's loop for `case`."""

  def __init__(self, case: Case, config, initial, masks: dict | None,
               teacher: tuple[dict, np.ndarray] | None = None):
    self.case, self.config, self.masks = case, config, masks
    method = config.method
    world = {"classifier": ref.Classifier(config.model, masks, NUM_CLASSES, IMAGE)}
    networks = {}
    if case.name == "dst":
      networks = {name: ref.TwoLayerHead(BOTTLENECK, method.width, NUM_CLASSES, 0.5,
                                         "Dropout_0", masks)
                  for name in ("adv_head", "pseudo_head")}
      self.grl = ref.WarmStartGRL(method.grl_alpha, method.grl_lo, method.grl_hi,
                                  method.grl_max_steps, auto_step=False)
    if case.name == "self_tuning":
      networks = {"self_tuning": torch.nn.ModuleDict(
          {"projector": torch.nn.Linear(BOTTLENECK, method.projection_dim)})}
    if networks:
      world["method"] = torch.nn.ModuleDict(networks)
    self.world = torch.nn.ModuleDict(world).double()
    _load(self.world, initial.variables)
    params = [p for p in self.world.parameters()]
    self.optimizer = torch.optim.SGD(params, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                                     nesterov=True)
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda x: (1.0 + GAMMA * float(x)) ** (-DECAY))
    self.classifier = lambda x: self.world["classifier"](x)[0]
    if case.name == "mean_teacher":
      self.teacher = copy.deepcopy(self.world["classifier"])
      for p in self.teacher.parameters():
        p.requires_grad = False
    if case.name == "flexmatch":
      self.thresholding = DynamicThresholdingModule(method.threshold, method.warmup,
                                                    NUM_CLASSES, UNLABELLED)
    if case.name == "debiasmatch":
      self.q_hat = torch.ones(NUM_CLASSES, dtype=torch.float64) / NUM_CLASSES
    if case.name == "self_tuning":
      queue = initial.model_state["queue"]["method"]["self_tuning"]
      encoder_q = Encoder(self.world["classifier"], self.world["method"]["self_tuning"]["projector"])
      self.pgc = SelfTuningReference(
          encoder_q, copy.deepcopy(encoder_q),
          torch.from_numpy(np.array(queue["keys"], np.float64)), NUM_CLASSES,
          method.queue_size, method.momentum, method.temperature)

    if case.name == "noisy_student":
      # `calc_teacher_output`: the teacher in evaluation mode (`as_teacher_model`:
      # no dropout) over the unlabelled split, in order, once.
      variables, unlabelled = teacher
      network = ref.Classifier(config.model, None, NUM_CLASSES, IMAGE).double()
      _load(network, variables)
      network.eval()
      with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(
            digits_eval_preprocess(unlabelled).transpose(0, 3, 1, 2))).double()
        output, _ = network(x)
      # Kept in float32, as tljax's evaluation predictions (see the case).
      self.teacher_output = torch.from_numpy(output.numpy().astype(np.float32)).double()

  def variables(self, module=None) -> dict[str, np.ndarray]:
    module = module or self.world
    return ref.tljax_variables(module)

  # ------------------------------------------------------------- TLlib's loops

  def labelled(self, x_l, x_l_strong, labels_l):
    """Every semi-supervised example's `cls_loss`."""
    y_l, y_l_strong = self.classifier(x_l), self.classifier(x_l_strong)
    return cross_entropy(y_l, labels_l) + self.config.method.trade_off_cls_strong * cross_entropy(
        y_l_strong, labels_l)

  def step(self, step: int, batch: dict, masks: dict) -> float:
    if self.masks is not None:
      self.masks.clear()
      self.masks.update({k: list(v) for k, v in masks.items()})
    to = lambda x: torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    s, t = batch["source"], batch["target"]
    x_l, x_l_strong, x_l_key = to(s["image"]), to(s["image_strong"]), to(s["image_key"])
    labels_l = torch.from_numpy(np.asarray(s["label"], np.int64))
    x_u, x_u_strong = to(t["image"]), to(t["image_strong"])
    method = self.config.method
    self.world.train()
    self.optimizer.zero_grad()
    loss = getattr(self, self.case.name)(step, method, x_l, x_l_strong, x_l_key, labels_l, x_u,
                                         x_u_strong, t)
    assert self.masks is None or not any(self.masks.values()), "unused dropout masks"
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    self.after_step(step)
    return float(loss.detach())

  def after_step(self, step: int) -> None:
    if self.case.name == "mean_teacher":
      global_step = step + 1
      alpha = min(self.config.method.ema_decay, 1 - 1 / global_step)
      student = self.world["classifier"]
      for teacher_param, param in zip(self.teacher.parameters(), student.parameters()):
        teacher_param.data = alpha * teacher_param + (1 - alpha) * param
      # `update_bn`: the student's statistics into the teacher (every layer here).
      for m2, m1 in zip(self.teacher.modules(), student.modules()):
        if isinstance(m1, torch.nn.modules.batchnorm._BatchNorm):
          m2.running_mean.data.copy_(m1.running_mean.data)
          m2.running_var.data.copy_(m1.running_var.data)
    if self.case.name == "dst":
      self.grl.step()

  def source_only(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    return self.labelled(x_l, x_l_strong, labels_l)

  def pi_model(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    p_u1 = torch.softmax(self.classifier(x_u), dim=1)
    p_u2 = torch.softmax(self.classifier(torch.from_numpy(np.ascontiguousarray(
        np.asarray(t["image_second"]).transpose(0, 3, 1, 2)))), dim=1)
    return cls_loss + method.trade_off * sigmoid_warm_up(step, method.warm_up_steps) * (
        l2_consistency_loss(p_u1, p_u2))

  def uda(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    with torch.no_grad():
      y_u = self.classifier(x_u)
    y_u_strong = self.classifier(x_u_strong)
    return cls_loss + method.trade_off * strong_weak_consistency_loss(
        method.threshold, method.temperature, y_u_strong, y_u)

  def fixmatch(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    with torch.no_grad():
      y_u = self.classifier(x_u)
    y_u_strong = self.classifier(x_u_strong)
    self_training, _, _ = confidence_based_self_training_loss(method.threshold, y_u_strong, y_u)
    return cls_loss + method.trade_off * self_training

  def pseudo_label(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    y_u = self.classifier(x_u)
    self_training, _, _ = confidence_based_self_training_loss(method.threshold, y_u, y_u)
    return cls_loss + method.trade_off * self_training

  def mean_teacher(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    self.teacher.train()
    with torch.no_grad():
      x_u_teacher = torch.from_numpy(np.ascontiguousarray(
          np.asarray(t["image_teacher"]).transpose(0, 3, 1, 2)))
      p_u_teacher = torch.softmax(self.teacher(x_u_teacher)[0], dim=1)
    p_u = torch.softmax(self.classifier(x_u), dim=1)
    return cls_loss + method.trade_off * sigmoid_warm_up(step, method.warm_up_steps) * (
        l2_consistency_loss(p_u, p_u_teacher, reduction="sum"))

  def flexmatch(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    with torch.no_grad():
      y_u = self.classifier(x_u)
    y_u_strong = self.classifier(x_u_strong)
    confidence, pseudo_labels = torch.softmax(y_u, dim=1).max(dim=1)
    dynamic_threshold = self.thresholding.get_threshold(pseudo_labels)
    mask = (confidence > dynamic_threshold).to(y_u.dtype)
    selected_mask = (confidence > method.threshold).long()
    self.thresholding.update(torch.from_numpy(np.asarray(t["index"], np.int64)), selected_mask,
                             pseudo_labels)
    self_training = method.trade_off * (
        F.cross_entropy(y_u_strong, pseudo_labels, reduction="none") * mask).mean()
    return cls_loss + self_training

  def debiasmatch(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    with torch.no_grad():
      y_u = self.classifier(x_u)
    y_u_strong = self.classifier(x_u_strong)
    q = torch.softmax(y_u, dim=1).mean(dim=0)
    self.q_hat = method.momentum * self.q_hat + (1 - method.momentum) * q
    self_training, _, _ = confidence_based_self_training_loss(
        method.threshold, y_u_strong + method.tau * torch.log(self.q_hat),
        y_u - method.tau * torch.log(self.q_hat))
    return cls_loss + method.trade_off * self_training

  def dst(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    classifier, heads = self.world["classifier"], self.world["method"]
    y_l_strong, _ = classifier(x_l_strong)
    cls_loss_strong = method.trade_off_cls_strong * F.cross_entropy(y_l_strong, labels_l)
    outputs, f = classifier(torch.cat((x_l, x_u), dim=0))
    outputs_adv = heads["adv_head"](self.grl(f))
    y_l, y_u = outputs.chunk(2, dim=0)
    y_l_adv, y_u_adv = outputs_adv.chunk(2, dim=0)
    cls_loss_weak = F.cross_entropy(y_l, labels_l)
    wce_loss = method.eta * worst_case_estimation_loss(method.eta_prime, y_l, y_l_adv, y_u,
                                                       y_u_adv)
    _, f_strong = classifier(x_u_strong)
    y_u_strong = heads["pseudo_head"](f_strong)
    self_training, _, _ = confidence_based_self_training_loss(method.threshold, y_u_strong, y_u)
    return cls_loss_strong + cls_loss_weak + wce_loss + method.trade_off * self_training

  def noisy_student(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    # TLlib backpropagates the two terms one after the other: the gradients add up.
    cls_loss = self.labelled(x_l, x_l_strong, labels_l)
    y_u = self.teacher_output[torch.from_numpy(np.asarray(t["index"], np.int64))]
    y_u_strong = self.classifier(x_u_strong)
    self_training_loss = method.trade_off * soft_cross_entropy(y_u_strong / method.temperature,
                                                               y_u / method.temperature)
    return cls_loss + self_training_loss

  def self_tuning(self, step, method, x_l, x_l_strong, x_l_key, labels_l, x_u, x_u_strong, t):
    # Both views strong: here `image` is the query view and `image_key` the key view.
    u_k = torch.from_numpy(np.ascontiguousarray(np.asarray(t["image_key"]).transpose(0, 3, 1, 2)))
    criterion_kl = torch.nn.KLDivLoss(reduction="batchmean")
    self.pgc.train()
    pgc_logits_labeled, pgc_labels_labeled, y_l = self.pgc(x_l, x_l_key, labels_l)
    loss = F.cross_entropy(y_l, labels_l) + criterion_kl(pgc_logits_labeled, pgc_labels_labeled)
    _, y_pred = self.pgc.encoder_q(x_u)
    _, pseudo_labels = torch.max(y_pred, dim=1)
    pgc_logits_unlabeled, pgc_labels_unlabeled, _ = self.pgc(x_u, u_k, pseudo_labels)
    return loss + criterion_kl(pgc_logits_unlabeled, pgc_labels_unlabeled)


# ----------------------------------------------------------------------------
# The test.
# ----------------------------------------------------------------------------


def _max_relative(ours: dict, theirs: dict, keys) -> dict[str, float]:
  out = {}
  for key in keys:
    a, b = ours[key], theirs[key]
    assert a.shape == b.shape, (key, a.shape, b.shape)
    out[key] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
  return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_first_steps_match_tllib(case, tmp_path):
  config = _config(case)
  batches = _batches(seed=CASES.index(case))
  teacher, unlabelled = None, None
  if case.name == "noisy_student":
    config.method.teacher, variables = _teacher_run(config, tmp_path / "teacher")
    unlabelled = np.random.default_rng(CASES.index(case)).integers(
        0, 256, (UNLABELLED, *IMAGE), dtype=np.uint8)
    teacher = (variables, unlabelled)
  initial, losses, masks, final = _run_tljax(config, case, batches, unlabelled)
  reference = Torch(case, config, initial, {} if case.dropout else None, teacher)
  start = reference.variables()
  torch_losses = [reference.step(step, batch, step_masks)
                  for step, (batch, step_masks) in enumerate(zip(batches, masks))]

  loss_diff = [abs(a - b) / abs(b) for a, b in zip(losses, torch_losses)]
  ours = {**_variables(final.params, "params"), **_variables(final.model_state.get(
      "batch_stats", {}), "batch_stats")}
  theirs = reference.variables()
  params = [k for k in theirs if k.startswith("params:")]
  stats = [k for k in theirs if k.startswith("batch_stats:")]
  assert set(params) | set(stats) == {k for k in ours if k.split(":")[0] in ("params",
                                                                              "batch_stats")}
  param_diff = _max_relative(ours, theirs, params)
  stat_diff = _max_relative(ours, theirs, stats) if case.compare_stats else {}
  moved = _max_relative(theirs, start, params)
  state_diff = _compare_method_state(case, final, reference)
  largest = lambda d: max(d.values()) if d else float("nan")
  RESULTS[f"{case.name} (semi-supervised)"] = {
      "steps": STEPS, "loss": max(loss_diff), "params": largest(param_diff),
      "stats": largest(stat_diff), "state": largest(state_diff), "moved": min(moved.values()),
      "source": case.source, "difference": case.difference}
  np.testing.assert_allclose(losses, torch_losses, rtol=TOLERANCE)
  for differences in (param_diff, stat_diff, state_diff):
    worst = max(differences, key=differences.get, default=None)
    assert worst is None or differences[worst] < TOLERANCE, (worst, differences[worst])
  # Not vacuous: every parameter moved.
  assert min(moved.values()) > 1e-6, min(moved, key=moved.get)


def _compare_method_state(case: Case, final, reference: Torch) -> dict[str, float]:
  """The method's state, tljax's against the reference's: the largest
  relative difference of each piece (asserted by the caller), after the
  checks of what is compared exactly or must hold."""
  method_state = final.method_state
  out = {}
  if case.name == "noisy_student":
    ours, theirs = method_state["teacher_logits"], reference.teacher_output.numpy()
    out = _max_relative({"teacher_logits": ours}, {"teacher_logits": theirs}, ["teacher_logits"])
    # Not vacuous: the teacher's predicted classes differ between examples.
    assert np.ptp(np.argmax(theirs, axis=1)) > 0
  if case.name == "flexmatch":
    np.testing.assert_array_equal(method_state["predictions"],
                                  reference.thresholding.net_outputs.numpy())
    # Not vacuous: several classes recorded, so the classes' thresholds differ.
    recorded = method_state["predictions"]
    assert len(set(recorded[recorded >= 0].tolist())) >= 2
    out = _max_relative({"predictions": np.asarray(recorded, np.float64)},
                        {"predictions": reference.thresholding.net_outputs.numpy().astype(
                            np.float64)}, ["predictions"])
  if case.name == "debiasmatch":
    np.testing.assert_allclose(method_state["q_hat"], reference.q_hat.numpy(), rtol=TOLERANCE)
    out = _max_relative({"q_hat": np.asarray(method_state["q_hat"])},
                        {"q_hat": reference.q_hat.numpy()}, ["q_hat"])
  if case.name == "mean_teacher":
    teacher = _variables(method_state["teacher"]["params"], "params")
    theirs = {k: v for k, v in reference.variables(reference.teacher).items()
              if k.startswith("params:")}
    assert set(teacher) == set(theirs)
    differences = _max_relative(teacher, theirs, list(theirs))
    assert max(differences.values()) < TOLERANCE, max(differences, key=differences.get)
    out = {"teacher/" + k: v for k, v in differences.items()}
  if case.name == "self_tuning":
    queue = final.model_state["queue"]["method"]["self_tuning"]
    np.testing.assert_allclose(queue["keys"], reference.pgc.queue_list.numpy(),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(queue["pointers"], reference.pgc.queue_ptr.numpy())
    key_encoder = reference.pgc.encoder_k
    theirs = {}
    for name, value in key_encoder.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      # The encoder's `classifier` is the world's; its `projector` is method/self_tuning's.
      full = name if name.startswith("classifier.") else "method.self_tuning." + name
      collection, path = ref.tljax_path(full)
      theirs[collection + ":" + "/".join(path)] = ref.from_torch(value.numpy().copy(), path[-1])
    key = method_state["key"]
    ours = {**_variables(key["params"], "params"), **_variables(key["batch_stats"],
                                                                "batch_stats")}
    assert set(ours) == set(theirs)
    differences = _max_relative(ours, theirs, list(theirs))
    assert max(differences.values()) < TOLERANCE, max(differences, key=differences.get)
    out = {"key/" + k: v for k, v in differences.items()}
    out.update(_max_relative({"queue": np.asarray(queue["keys"])},
                             {"queue": reference.pgc.queue_list.numpy()}, ["queue"]))
  return out
