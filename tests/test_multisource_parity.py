"""Multi-source adaptation step for step against PyTorch restatements of the
authors' code, written here from it: M3SDA (Peng et al., ICCV 2019; the
authors' digits code, VisionLearningGroup.github.io `M3SDA/code_MSDA_digit`:
`solver_MSDA.py`'s passes of each labelled domain and the target through the
generator and the classifier, `metric/msda.py`'s `euclidean` of moments) and
MFSAN (Zhu et al., AAAI 2019; easezyc/deep-transfer-learning
`MUDA/MFSAN/MFSAN_2src`: `resnet.py`'s `MFSAN.forward`, `mmd.py`, `mfsan.py`'s
loop and its progressive weight `gamma`). TLlib has neither.

The task is `configs/<method>.py:digits_ms` shrunk: two labelled domains,
sampled per domain (8 examples each, interleaved in the batch: both sides group
them by domain), and an unlabelled target of 8, over 4 steps. Both sides start
from the same weights (tljax's initial variables loaded into
`benchmarks.torch_reference.Classifier`, MFSAN's branches into
`MultiSourceHead` below), see the same batches and compute in float64 (JAX
x64, torch `.double()`); the network is a two-block `small_cnn` on 8x8
images, 4 classes (M3SDA: a bottleneck of 12; MFSAN: branches of width 12 on
the pooled features, no bottleneck, as its config). The optimizer on both
sides is SGD with Nesterov momentum and weight decay under
`lr (1 + gamma step)^-decay` (tljax's digits recipe).

Each reference runs in tljax's setting where tljax departs from the authors'
code by design (`Case.difference`, also in each method module's docstring).
Compared: every step's loss and, after the last step, every parameter and
every BatchNorm running statistic (the order of the passes is part of the
comparison), to 1e-9 relative. `RESULTS` keeps the measurements in the form
of `test_trajectory.py`'s table.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
import sys
from typing import Any

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from tljax import train

sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install tljax[test])")
from benchmarks import torch_reference as ref  # noqa: E402  pylint: disable=g-import-not-at-top
# The harness's helpers (tljax's variables keyed as PyTorch's, relative differences).
from test_ssl_parity import _max_relative, _variables  # noqa: E402  pylint: disable=g-import-not-at-top

F = torch.nn.functional
NUM_CLASSES = 4
BATCH = 8  # per labelled domain, and the target's
SOURCES = 2
IMAGE = (8, 8, 3)
WIDTHS = (4, 4)
BOTTLENECK = 12  # M3SDA's features
HIDDEN = 12  # MFSAN's branch width (the authors': 256)
STEPS = 4
LR, GAMMA, DECAY, MOMENTUM, WEIGHT_DECAY = 0.01, 0.01, 0.75, 0.9, 5e-4
TOLERANCE = 1e-9

RESULTS: dict[str, dict[str, Any]] = {}
# Where the paper and the authors' code disagree, the version tljax's default
# follows (the form of test_trajectory.py's `DEFAULT_FOLLOWS`).
DEFAULT_FOLLOWS = {
    "m3sda": "the paper's moment distance (Eq. 1, K = 2) with one shared classifier: neither "
             "M3SDA-beta's per-source classifier pairs nor the authors' code's two MCD-style "
             "classifiers and `msda_regulizer` (moments 1-5)",
    "mfsan": "the authors' two-source code for the MMD estimate, the weight schedule "
             "(`i / iteration`, i from 1) and the branches' disagreement",
}


pytestmark = pytest.mark.usefixtures("float64_parity")


# ----------------------------------------------------------------------------
# Cases.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One method: `model` fields over `configs/<name>.py:digits_ms` (after the
  shared small network, batch and optimizer), `source` the reference code
  restated, `difference` the documented differences the case runs with."""

  name: str
  source: str
  model: dict
  difference: str = ""

  @property
  def module(self) -> str:  # the config it runs (test_trajectory.py's table)
    return self.name


CASES = [
    Case("m3sda", "M3SDA authors' solver_MSDA.py, msda.py", {"bottleneck_dim": BOTTLENECK},
         difference="the moment distance of the paper's Eq. 1 (raw moments of orders 1 and 2, "
         "each order's Euclidean distances averaged over the source-target and the "
         "source-source pairs) at trade-off 1, the labelled domains' cross-entropies averaged, "
         "one classifier: the authors' train_MSDA trains two classifiers with MCD's discrepancy "
         "steps and sums the cross-entropies, and its msda_regulizer (orders 1-5, weight "
         "0.0005) centres the features, compares the centred feature matrices example by "
         "example at order 1, repeats one source pair and leaves another out, and divides by 6"),
    Case("mfsan", "MFSAN authors' MFSAN_2src resnet.py, mmd.py, mfsan.py", {"head_hidden": HIDDEN},
         difference="one update per step over both labelled domains' terms, averaged, with one "
         "target batch that passes first (the authors: one update per domain in turn, each with "
         "a fresh target batch, the source through the shared network first); each branch "
         "Dense -> BatchNorm -> ReLU on the pooled features (the authors: a 1x1-3x3-1x1 "
         "convolution block on the last feature map, then pooled)"),
]


def _config(case: Case) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{case.name}").get_config("digits_ms")
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"widths": WIDTHS, "kernel_sizes": (3,) * len(WIDTHS), "conv_impl": "xla"})
  config.model.dtype = "float64"
  config.model.update(case.model)
  config.batch_size = BATCH
  config.total_steps = STEPS  # MFSAN's progressive weight spans the run
  config.optimizer.learning_rate = LR
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY
  config.schedule.gamma = GAMMA
  config.schedule.power = DECAY
  return config


def _batches(seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  images = lambda n: rng.standard_normal((n, *IMAGE))
  out = []
  for _ in range(STEPS):
    # Each labelled domain's examples spread through the batch, shifted apart.
    domain = rng.permutation(np.repeat(np.arange(SOURCES), BATCH)).astype(np.int32)
    source = {"image": images(SOURCES * BATCH) + 0.3 * domain[:, None, None, None],
              "label": rng.integers(0, NUM_CLASSES, SOURCES * BATCH).astype(np.int32),
              "domain": domain}
    out.append({"source": source, "target": {"image": images(BATCH) * 1.5 + 0.5}})
  return out


# ----------------------------------------------------------------------------
# The tljax side.
# ----------------------------------------------------------------------------


def _run_tljax(config, batches):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  setup = train.build(config, NUM_CLASSES, mesh, IMAGE, num_source_domains=SOURCES)
  state = setup.state
  initial = jax.device_get(state)
  losses, metrics = [], []
  for batch in batches:
    state, step_metrics = setup.train_step(state, jax.tree.map(jax.numpy.asarray, batch))
    metrics.append(jax.device_get(step_metrics))
    losses.append(float(step_metrics["loss"]))
  return initial, losses, metrics, jax.device_get(state)


# ----------------------------------------------------------------------------
# The PyTorch side: the authors' pieces and loops.
# ----------------------------------------------------------------------------


def euclidean(x1, x2):
  """The M3SDA authors' `euclidean`."""
  return ((x1 - x2) ** 2).sum().sqrt()


def moment_distance(sources, target, moments):
  """M3SDA's Eq. 1: for k = 1..K, the mean over labelled domains of
  `euclidean(E[x_i^k], E[x_T^k])` plus the mean over their pairs of
  `euclidean(E[x_i^k], E[x_j^k])`, moments element-wise over each domain's examples."""
  total = 0.0
  for k in range(1, moments + 1):
    source_moments = [(x**k).mean(0) for x in sources]
    target_moment = (target**k).mean(0)
    total = total + sum(euclidean(m, target_moment) for m in source_moments) / len(sources)
    pairs = list(itertools.combinations(range(len(sources)), 2))
    total = total + sum(euclidean(source_moments[i], source_moments[j])
                        for i, j in pairs) / len(pairs)
  return total


def mmd(source, target, kernel_mul=2.0, kernel_num=5):
  """The MFSAN authors' `mmd.mmd` (its `guassian_kernel`, no fixed sigma)."""
  n_samples = source.size(0) + target.size(0)
  total = torch.cat([source, target], dim=0)
  total0 = total.unsqueeze(0).expand(total.size(0), total.size(0), total.size(1))
  total1 = total.unsqueeze(1).expand(total.size(0), total.size(0), total.size(1))
  l2_distance = ((total0 - total1) ** 2).sum(2)
  bandwidth = torch.sum(l2_distance.data) / (n_samples**2 - n_samples)
  bandwidth /= kernel_mul ** (kernel_num // 2)
  kernels = sum(torch.exp(-l2_distance / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
  batch_size = source.size(0)
  xx, yy = kernels[:batch_size, :batch_size], kernels[batch_size:, batch_size:]
  xy, yx = kernels[:batch_size, batch_size:], kernels[batch_size:, :batch_size]
  return torch.mean(xx + yy - xy - yx)


class MultiSourceHead(torch.nn.Module):
  """MFSAN's per-source `sonnet_j` (here Linear -> BatchNorm1d -> ReLU on the
  pooled features, tljax's branch) and `cls_fc_son_j`, named as tljax's
  `multi_source` head names them."""

  def __init__(self, in_features, hidden, num_classes, branches):
    super().__init__()
    self.branches = branches
    for j in range(branches):
      setattr(self, f"branch{j}_linear", torch.nn.Linear(in_features, hidden))
      setattr(self, f"branch{j}_bn", torch.nn.BatchNorm1d(hidden))
      setattr(self, f"branch{j}_head", torch.nn.Linear(hidden, num_classes))

  def sonnet(self, j, f):
    return F.relu(getattr(self, f"branch{j}_bn")(getattr(self, f"branch{j}_linear")(f)))

  def cls_fc(self, j, h):
    return getattr(self, f"branch{j}_head")(h)


class Torch:
  """The classifier (`classifier`), loaded from tljax's initial variables,
  and the authors' loop for `case` in tljax's setting."""

  def __init__(self, case: Case, config, initial):
    self.case, self.config = case, config
    classifier = ref.Classifier(config.model, None, NUM_CLASSES, IMAGE)
    if case.name == "mfsan":
      features = -(-IMAGE[0] // 4) * -(-IMAGE[1] // 4) * WIDTHS[-1]
      classifier.head = MultiSourceHead(features, HIDDEN, NUM_CLASSES, SOURCES)
    self.world = torch.nn.ModuleDict({"classifier": classifier}).double()
    self._load(initial)
    self.optimizer = torch.optim.SGD(self.world.parameters(), LR, momentum=MOMENTUM,
                                     weight_decay=WEIGHT_DECAY, nesterov=True)
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda x: (1.0 + GAMMA * float(x)) ** (-DECAY))

  def _load(self, initial):
    state = self.world.state_dict()
    for collection in ("params", "batch_stats"):
      for path, value in flax.traverse_util.flatten_dict(initial.variables[collection]).items():
        key = ref.torch_key(collection, path)
        assert key in state, key
        state[key] = torch.from_numpy(ref.to_torch(np.array(value), path[-1])).double()
    self.world.load_state_dict(state)

  def variables(self) -> dict[str, np.ndarray]:
    return ref.tljax_variables(self.world)

  def step(self, step: int, batch: dict) -> float:
    to = lambda x: torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    s = batch["source"]
    domain = np.asarray(s["domain"])
    # Each labelled domain's examples, in their order in the batch (one loader per domain).
    x_s = [to(np.asarray(s["image"])[domain == j]) for j in range(SOURCES)]
    labels_s = [torch.from_numpy(np.asarray(s["label"], np.int64)[domain == j])
                for j in range(SOURCES)]
    x_t = to(batch["target"]["image"])
    self.world.train()
    self.optimizer.zero_grad()
    loss = getattr(self, self.case.name)(step, self.config.method, x_s, labels_s, x_t)
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    return float(loss.detach())

  def m3sda(self, step, method, x_s, labels_s, x_t):
    # `loss_all_domain`: each labelled domain through G and C1 on its own, then the target.
    classifier = self.world["classifier"]
    features, risks = [], []
    for x, labels in zip(x_s, labels_s):
      y, f = classifier(x)
      features.append(f)
      risks.append(F.cross_entropy(y, labels))
    _, f_t = classifier(x_t)
    cls_loss = torch.stack(risks).mean()
    return cls_loss + method.trade_off * moment_distance(features, f_t, method.moments)

  def mfsan(self, step, method, x_s, labels_s, x_t):
    # `MFSAN.forward` for every labelled domain `mark`, sharing one target pass.
    classifier = self.world["classifier"]
    shared, head = classifier.backbone, classifier.head
    data_tgt = shared(x_t)
    tgt_son = [head.sonnet(j, data_tgt) for j in range(SOURCES)]
    pred_tgt = [F.softmax(head.cls_fc(j, h), dim=1) for j, h in enumerate(tgt_son)]
    # `mfsan.py`: gamma of iteration i = 1, 2, ... over the whole run.
    i = step + 1
    gamma = method.trade_off * (2 / (1 + math.exp(-10 * i / method.trade_off_warmup)) - 1)
    losses = []
    for j, (x, labels) in enumerate(zip(x_s, labels_s)):
      data_src = head.sonnet(j, shared(x))
      mmd_loss = mmd(data_src, tgt_son[j])
      # The 3-source code's form: the mean over the other branches (2 sources: the one pair).
      l1_loss = sum(torch.mean(torch.abs(pred_tgt[j] - pred_tgt[k]))
                    for k in range(SOURCES) if k != j) / (SOURCES - 1)
      cls_loss = F.nll_loss(F.log_softmax(head.cls_fc(j, data_src), dim=1), labels)
      losses.append(cls_loss + gamma * (mmd_loss + l1_loss))
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------
# The test.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_steps_match_the_authors_code(case):
  config = _config(case)
  batches = _batches(seed=CASES.index(case))
  initial, losses, metrics, final = _run_tljax(config, batches)
  reference = Torch(case, config, initial)
  start = reference.variables()
  torch_losses = [reference.step(step, batch) for step, batch in enumerate(batches)]

  loss_diff = [abs(a - b) / abs(b) for a, b in zip(losses, torch_losses)]
  ours = {**_variables(final.params, "params"),
          **_variables(final.model_state["batch_stats"], "batch_stats")}
  theirs = reference.variables()
  assert set(ours) == set(theirs), set(ours) ^ set(theirs)
  params = [k for k in theirs if k.startswith("params:")]
  stats = [k for k in theirs if k.startswith("batch_stats:")]
  param_diff = _max_relative(ours, theirs, params)
  stat_diff = _max_relative(ours, theirs, stats)
  moved = _max_relative(theirs, start, params)
  RESULTS[case.name] = {"steps": STEPS, "loss": max(loss_diff),
                        "params": max(param_diff.values()), "stats": max(stat_diff.values()),
                        "state": float("nan"), "moved": min(moved.values()),
                        "source": case.source, "difference": case.difference}
  worst = lambda d: max(d, key=d.get)
  assert max(loss_diff) < TOLERANCE, (losses, torch_losses)
  assert max(param_diff.values()) < TOLERANCE, (worst(param_diff), max(param_diff.values()))
  assert max(stat_diff.values()) < TOLERANCE, (worst(stat_diff), max(stat_diff.values()))
  # Not vacuous: every parameter moved (a bias before BatchNorm by weight decay alone) ...
  assert min(moved.values()) > 1e-6, (min(moved, key=moved.get), min(moved.values()))
  # ... and the alignment term acted: a distance that is not zero, under a weight that is not.
  transfer = [m["transfer_loss"] for m in metrics]
  assert min(transfer) > 1e-3, transfer
  if case.name == "mfsan":
    weights = [m["trade_off_now"] for m in metrics]
    assert min(weights) > 0 and weights == sorted(weights), weights
