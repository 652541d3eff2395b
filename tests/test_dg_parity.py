"""Whole steps of the domain-generalisation methods against PyTorch
restatements of TLlib's domain-generalisation examples
(`examples/domain_generalization/image_classification/{irm,vrex,groupdro,coral,
mldg,mixstyle,erm}.py`), written here from TLlib's code: IRM's
`InvariancePenaltyLoss` with the anneal that builds a new SGD and cosine
schedule, V-REx's variance of the domains' risks, GroupDRO's
`AutomaticUpdateDomainWeightModule` over one pass per domain, CORAL's pairwise
loop, MLDG's `higher.innerloop_ctx` (a differentiable copy of the run's SGD:
its momentum buffers and current rate, the copied network's own BatchNorm
buffers), `tllib.normalization.mixstyle.MixStyle` after the chosen blocks, and
`tllib.normalization.ibn.InstanceBatchNorm2d` trained by `erm.py`. The
per-domain losses and layers on fixed inputs are `tests/test_dg.py`'s
(whose restatements this file reuses); here whole steps are compared.

Both sides start from the same weights (tljax's initial variables loaded into
`benchmarks/torch_reference.py`'s `Classifier`, its backbone given the DG
layers), see the same batches (8 examples of each labelled domain, the
domains in increasing order, as `StepContext.group_by_domain` reads them) and
compute in float64 (JAX x64, torch `.double()`), over 5 steps with TLlib's DG
optimizer (SGD, Nesterov, weight decay, `CosineAnnealingLR` over 8 steps).
The network is the `digits_dg` classifier (no bottleneck, a linear head) on
a `small_cnn` of two blocks (three for MixStyle, whose layers follow the
first two) on 8x8 images, 4 classes. The random draws made inside
tljax's jitted step are given to the reference: MLDG's meta-train /
meta-test split (drawn here with `split_domains` from the step's key, as the
step draws it) and each MixStyle layer's partners, Beta weights and coin
(sent to the host from inside the compiled step).

Compared: every step's loss, and after the last step every parameter, every
BatchNorm running statistic (PyTorch's: the running variance averages the
unbiased batch variance) and GroupDRO's group weights, to 1e-9 relative.
`RESULTS` keeps each case's measurements in the form of
`tests/test_trajectory.py`'s table.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO

from tljax import train
from tljax.methods.mldg import split_domains
from tljax.models import normalization

sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install tljax[test])")
from test_dg import TorchDomainWeights, torch_coral, torch_irm_penalty, torch_mixstyle
from test_ssl_parity import _max_relative, _variables

from benchmarks import torch_reference as ref

F = torch.nn.functional
tnn = torch.nn
NUM_CLASSES = 4
BATCH = 8  # per labelled domain
IMAGE = (8, 8, 3)
WIDTHS = (4, 4)
STEPS = 5
TOTAL_STEPS = 8  # the cosine schedule's span: the rate falls by half over the run
ANNEAL_STEPS = 2  # IRM / V-REx: the new optimizer starts at step 2 of 5
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
TOLERANCE = 1e-9

RESULTS: dict[str, dict[str, Any]] = {}


pytestmark = pytest.mark.usefixtures("float64_parity")


# ----------------------------------------------------------------------------
# Cases.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One TLlib DG example: `method` fields (and `model` backbone fields) over
  `configs/<name>.py:digits_dg`, with `domains` labelled domains of which
  `per_step` are in each step's batch (0: all)."""

  name: str
  source: str
  method: dict = dataclasses.field(default_factory=dict)
  backbone: dict = dataclasses.field(default_factory=dict)
  domains: int = 3
  per_step: int = 0
  difference: str = ""
  # (what, test(run)): the method's own mechanism acted in the run.
  signal: tuple[str, Callable] | None = None

  @property
  def module(self) -> str:  # the config it runs (test_trajectory.py's table)
    return self.name


def _weight_switched(run) -> bool:
  weights = [float(m["penalty_weight"]) for m in run.metrics]
  penalties = [float(m["penalty"]) for m in run.metrics]
  expected = [1.0] * ANNEAL_STEPS + [run.config.method.trade_off] * (STEPS - ANNEAL_STEPS)
  return weights == expected and min(abs(p) for p in penalties) > 0


def _mixed_and_kept(run) -> bool:
  coins = [bool(apply) for draws in run.draws for calls in draws.values()
           for _, _, apply in calls]
  return len(coins) == 2 * STEPS and any(coins) and not all(coins)


CASES = [
    Case("irm", "TLlib irm.py (InvariancePenaltyLoss)",
         {"trade_off": 10.0, "anneal_steps": ANNEAL_STEPS},
         signal=("the penalty's weight 1, then trade_off after the optimizer restarts",
                 _weight_switched)),
    Case("vrex", "TLlib vrex.py", {"trade_off": 3.0, "anneal_steps": ANNEAL_STEPS},
         signal=("the penalty's weight 1, then trade_off after the optimizer restarts",
                 _weight_switched)),
    Case("groupdro", "TLlib groupdro.py, tllib/reweight/groupdro.py", {"eta": 0.01}, per_step=2,
         difference="2 of the 3 labelled domains in each step (as TLlib samples DomainNet's 5, "
         "3 at a time), so that the weights of the domains left out carry over; group weights compared "
         "normalised (TLlib keeps them unnormalised; only their ratios are read)",
         signal=("group weights away from uniform", lambda run: np.ptp(
             np.asarray(run.final.method_state["group_weights"])) > 1e-4)),
    Case("coral_dg", "TLlib coral.py (CorrelationAlignmentLoss per pair)", {"trade_off": 1.0},
         signal=("an alignment loss of the order of the risks",
                 lambda run: min(float(m["transfer_loss"]) for m in run.metrics) > 1e-3)),
    Case("mldg", "TLlib mldg.py (higher.innerloop_ctx)",
         {"num_support": 1, "trade_off": 1.0, "inner_steps": 1},
         difference="tljax's running statistics: the query domains' passes update them after "
         "the support domain's (TLlib runs the query domains through higher's copy of the "
         "network, whose BatchNorm buffers are discarded, so only the support pass reaches the "
         "running statistics); parameters and losses are unaffected",
         signal=("the support domain drawn differs between steps",
                 lambda run: len({tuple(d["support"]) for d in run.draws}) > 1)),
    Case("mixstyle", "TLlib mixstyle.py, tllib/normalization/mixstyle",
         backbone={"widths": (4, 4, 4)},
         difference="2 of 3 labelled domains per step; partners as tljax pairs them (ranks "
         "drawn within each domain, one-to-one across the two: TLlib's two halves draw "
         "independent permutations, so its pairing need not be mutual), given to the "
         "reference with tljax's coin and Beta weights",
         signal=("some MixStyle calls mixed and some kept the input", _mixed_and_kept)),
    Case("ibn", "TLlib erm.py, tllib/normalization/ibn (InstanceBatchNorm2d)",
         difference="IBN-a's InstanceBatchNorm2d in both blocks of the small CNN "
         "(`ibn_blocks=2`; TLlib's ibn.sh trains resnet50_ibn_b, whose IBN-b has no "
         "instance-batch split); the labelled domains pooled, 24 examples per step",
         signal=("instance-norm parameters trained", lambda run: np.max(np.abs(
             np.asarray(run.final.params["classifier"]["backbone"]["bn1"]["IN"]["scale"]) - 1))
             > 1e-5)),
]


# Where a method's references disagree (paper and code), which one tljax's
# default follows (the form of test_trajectory.py's `DEFAULT_FOLLOWS`).
DEFAULT_FOLLOWS = {
    "irm": "TLlib's and DomainBed's code: weight 1 for `anneal_steps`, then `trade_off` with "
           "a new optimizer and schedule; the IRM authors' Colored-MNIST code keeps its "
           "optimizer and divides the whole loss by the weight instead (the penalty itself, "
           "the product of the even and odd halves' gradients, is the paper's)",
    "vrex": "TLlib's code: the mean of the domains' risks plus `trade_off` times their "
            "variance (the paper's Eq. sums the risks), with IRM's anneal",
    "groupdro": "TLlib's and DomainBed's code: every domain of the batch updates its weight "
                "each step; the paper's Algorithm 1 draws one group per step",
    "coral_dg": "TLlib's (DomainBed's) loss: mean and covariance differences averaged over "
                "pairs of domains; the Deep CORAL paper's covariance-only "
                "`||C_s - C_t||^2 / 4d^2` is not an option here",
    "mldg": "TLlib's code: the inner step is the run's own optimizer (momentum, weight decay, "
            "Nesterov, current rate; the paper's is plain SGD), and the gradient reaches "
            "through it (second order, as the paper; DomainBed's MLDG is first order)",
    "mixstyle": "TLlib's code: cross-domain partners (`mixstyle_mode='crossdomain'`); the "
                "MixStyle authors' default shuffles the whole batch (`'random'`)",
}


def _config(case: Case) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{case.name}").get_config("digits_dg")
  kwargs = config.model.backbone_kwargs
  kwargs.widths = tuple(case.backbone.get("widths", WIDTHS))
  kwargs.kernel_sizes = (3,) * len(kwargs.widths)
  kwargs.conv_impl = "xla"
  config.model.dtype = "float64"
  assert config.model.bottleneck_dim == 0 and not config.model.feature_dropout
  pooled = config.data.source_sampling == "pooled"
  config.batch_size = BATCH * case.domains if pooled else BATCH
  if case.per_step:
    config.data.domains_per_step = case.per_step
  config.total_steps = TOTAL_STEPS
  config.optimizer.learning_rate = LR
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY
  assert config.optimizer.nesterov and config.schedule.name == "cosine"
  config.method.update(case.method)
  return config


def _batches(case: Case, config, seed: int) -> list[dict]:
  """Each step: `BATCH` examples of each of the step's domains (domain `d`'s
  images shifted and scaled by `d`, so that their styles differ), in
  increasing domain order; pooled (IBN's ERM), the examples shuffled."""
  rng = np.random.default_rng(seed)
  per_step = train.domains_per_step(config, case.domains)
  out = []
  for _ in range(STEPS):
    present = np.sort(rng.choice(case.domains, per_step, replace=False))
    images, labels, domains = [], [], []
    for d in present:
      images.append(rng.standard_normal((BATCH, *IMAGE)) * (1.0 + 0.5 * d) + 0.5 * d)
      labels.append(rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32))
      domains.append(np.full(BATCH, d, np.int32))
    source = {"image": np.concatenate(images), "label": np.concatenate(labels),
              "domain": np.concatenate(domains)}
    if config.data.source_sampling == "pooled":
      order = rng.permutation(len(source["label"]))
      source = {k: v[order] for k, v in source.items()}
    out.append({"source": source})
  return out


# ----------------------------------------------------------------------------
# The tljax side.
# ----------------------------------------------------------------------------


def _mixstyle_draws(record: dict[str, list]):
  """flax interceptor: each MixStyle layer's draws in training sent to
  `record[layer]` as `(partner, weight, mixed)` by a host callback compiled
  into the step, so the draws are those of the step itself: the partners and
  Beta weights the layer hands `normalization.mix_styles`, and whether its
  coin chose the mixed features (its output differs from its input)."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    training = args[1] if len(args) > 1 else kwargs.get("train", False)
    if not (isinstance(module, normalization.MixStyle) and context.method_name == "__call__"
            and training and not module.is_initializing()):
      return next_fun(*args, **kwargs)
    seen, mix_styles = [], normalization.mix_styles

    def spy(x, partner, weight, *rest, **options):
      seen.append((partner, weight))
      return mix_styles(x, partner, weight, *rest, **options)

    with mock.patch.object(normalization, "mix_styles", spy):
      out = next_fun(*args, **kwargs)
    (partner, weight), = seen
    jax.debug.callback(
        lambda *draws, name=module.name: record.setdefault(name, []).append(
            tuple(np.asarray(d) for d in draws)), partner, weight, jnp.any(out != args[0]),
        ordered=True)
    return out

  return intercept


@dataclasses.dataclass
class TljaxRun:
  config: Any
  initial: Any
  final: Any
  losses: list[float]
  metrics: list[dict]
  # Per step: the random draws the reference is given (MLDG's split, MixStyle's).
  draws: list[dict]


def _run_tljax(case: Case, config, batches) -> TljaxRun:
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  setup = train.build(config, NUM_CLASSES, mesh, IMAGE, num_source_domains=case.domains,
                      has_target=False)
  state = setup.state
  initial = jax.device_get(state)
  per_step = setup.ctx.domains_per_step
  record: dict[str, list] = {}
  losses, metrics, draws = [], [], []
  for step, batch in enumerate(batches):
    with nn.intercept_methods(_mixstyle_draws(record)):
      state, step_metrics = setup.train_step(state, jax.tree.map(jnp.asarray, batch))
    jax.effects_barrier()
    if case.name == "mldg":
      # `MLDG.train_step`'s split of the step's domains (positions in domain order).
      split_rng = jax.random.split(jax.random.fold_in(initial.rng, step), 3)[0]
      support, query = split_domains(split_rng, per_step, config.method.num_support)
      draws.append({"support": np.asarray(support).tolist(), "query": np.asarray(query).tolist()})
    else:
      draws.append(dict(record))
    record.clear()
    metrics.append(jax.device_get(step_metrics))
    losses.append(float(step_metrics["loss"]))
  return TljaxRun(config, initial, jax.device_get(state), losses, metrics, draws)


# ----------------------------------------------------------------------------
# The PyTorch side: TLlib's modules and loops.
# ----------------------------------------------------------------------------


class InstanceBatchNorm2d(tnn.Module):
  """TLlib's `tllib.normalization.ibn.InstanceBatchNorm2d`."""

  def __init__(self, planes, ratio=0.5):
    super().__init__()
    self.half = int(planes * ratio)
    self.IN = tnn.InstanceNorm2d(self.half, affine=True)  # pylint: disable=invalid-name
    self.BN = tnn.BatchNorm2d(planes - self.half)  # pylint: disable=invalid-name

  def forward(self, x):
    split = torch.split(x, self.half, 1)
    return torch.cat((self.IN(split[0].contiguous()), self.BN(split[1].contiguous())), 1)


def mixstyle(x, partner, weight, apply):
  """TLlib's `MixStyle.forward` in training, its draws given: `apply` for
  `random.random() <= p`, `weight` for the Beta sample, `partner` for `perm`."""
  if not apply:
    return x
  return torch_mixstyle(x, partner, weight)


class Backbone(ref.SmallCNN):
  """tljax's `small_cnn` with its DG options: TLlib's IBN-a layer in place of
  the first `ibn_blocks` BatchNorms, MixStyle after the `mix_layers` blocks
  (each call's draws popped from `draws[mixstyle_<block>]`)."""

  def __init__(self, widths, ibn_blocks, mix_layers, draws):
    super().__init__(widths)
    for i in range(ibn_blocks):
      setattr(self, f"bn{i + 1}", InstanceBatchNorm2d(widths[i]))
    self.mix_layers, self.draws = tuple(mix_layers), draws

  def forward(self, x):
    for i in range(1, len(self.widths) + 1):
      x = F.max_pool2d(F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))), 2,
                       ceil_mode=True)
      if f"block{i}" in self.mix_layers and self.training:
        x = mixstyle(x, *self.draws[f"mixstyle_block{i}"].pop(0))
    return x.permute(0, 2, 3, 1).flatten(1)


class Reference:
  """TLlib's DG classifier, optimizer and the training loop of `case`'s example."""

  def __init__(self, case: Case, config, initial):
    self.case, self.config = case, config
    model = config.model
    classifier = ref.Classifier(model, None, NUM_CLASSES, IMAGE)
    kwargs = model.backbone_kwargs
    self.draws: dict[str, list] = {}
    classifier.backbone = Backbone(tuple(kwargs.widths), kwargs.get("ibn_blocks", 0),
                                   kwargs.get("mixstyle_layers", ()), self.draws)
    self.world = tnn.ModuleDict({"classifier": classifier}).double()
    self._load(initial)
    self.optimizer, self.scheduler = self._optimizer(config.total_steps)
    if case.name == "groupdro":
      self.domain_weights = TorchDomainWeights(case.domains, config.method.eta)

  def _load(self, initial):
    state = self.world.state_dict()
    loaded = set()
    for collection in ("params", "batch_stats"):
      for path, value in flax.traverse_util.flatten_dict(initial.variables[collection]).items():
        key = ref.torch_key(collection, path)
        assert key in state, key
        state[key] = torch.from_numpy(ref.to_torch(np.array(value), path[-1])).double()
        loaded.add(key)
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    assert not missing, missing
    self.world.load_state_dict(state)

  def _optimizer(self, steps: int):
    """TLlib's DG optimizer: `SGD(classifier.get_parameters(lr), lr, momentum,
    weight_decay, nesterov=True)` (one rate: no `--finetune`) and
    `CosineAnnealingLR` over `steps`."""
    optimizer = torch.optim.SGD(self.world.parameters(), LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY, nesterov=True)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

  def variables(self) -> dict[str, np.ndarray]:
    return ref.tljax_variables(self.world)

  # ------------------------------------------------------------- TLlib's loops

  def step(self, step: int, batch: dict, draws: dict) -> float:
    source = batch["source"]
    x = torch.from_numpy(np.ascontiguousarray(source["image"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(source["label"].astype(np.int64))
    domain = source["domain"]
    present = sorted(set(domain.tolist()))
    # The chunks TLlib's loops cut the batch into, one per domain.
    rows = [torch.from_numpy(np.flatnonzero(domain == d)) for d in present]
    method = self.config.method
    if method.get("anneal_steps") and step == method.anneal_steps:
      # IRM / V-REx: a new optimizer and schedule over the steps left.
      self.optimizer, self.scheduler = self._optimizer(self.config.total_steps - step)
    self.world.train()
    self.optimizer.zero_grad()
    loss = getattr(self, self.case.name)(step, method, x, labels, rows, present, draws)
    assert not any(self.draws.values()), "unused MixStyle draws"
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    return float(loss.detach())

  def classifier(self, x):
    return self.world["classifier"](x)

  def irm(self, step, method, x, labels, rows, present, draws):
    y, _ = self.classifier(x)
    loss_ce = F.cross_entropy(y, labels)
    loss_penalty = 0
    for r in rows:
      loss_penalty += torch_irm_penalty(y[r], labels[r]) / len(rows)
    trade_off = method.trade_off if step >= method.anneal_steps else 1
    return loss_ce + loss_penalty * trade_off

  def vrex(self, step, method, x, labels, rows, present, draws):
    y, _ = self.classifier(x)
    # TLlib fills `torch.zeros(n)` (torch's default dtype); here float64.
    loss_ce_per_domain = torch.stack([F.cross_entropy(y[r], labels[r]) for r in rows])
    loss_ce = loss_ce_per_domain.mean()
    loss_penalty = ((loss_ce_per_domain - loss_ce) ** 2).mean()
    trade_off = method.trade_off if step >= method.anneal_steps else 1
    return loss_ce + loss_penalty * trade_off

  def groupdro(self, step, method, x, labels, rows, present, draws):
    loss_per_domain = torch.stack([F.cross_entropy(self.classifier(x[r])[0], labels[r])
                                   for r in rows])
    self.domain_weights.update(loss_per_domain, present)
    domain_weight = self.domain_weights.get_domain_weight(present)
    return (loss_per_domain * domain_weight).sum()

  def coral_dg(self, step, method, x, labels, rows, present, draws):
    y, f = self.classifier(x)
    n = len(rows)
    loss_ce, loss_penalty = 0, 0
    for i in range(n):
      loss_ce += F.cross_entropy(y[rows[i]], labels[rows[i]])
      for j in range(i + 1, n):
        loss_penalty += torch_coral(f[rows[i]], f[rows[j]])
    loss_ce /= n
    loss_penalty /= n * (n - 1) / 2
    return loss_ce + loss_penalty * method.trade_off

  def mldg(self, step, method, x, labels, rows, present, draws):
    """TLlib's `train` with `higher.innerloop_ctx(model, optimizer,
    copy_initial_weights=False)`: the inner network's fast weights start at
    the network's own (so the outer gradient reaches through the inner
    steps), its BatchNorm buffers are copies (`buffer_sync`), and the inner
    optimizer is `DifferentiableSGD` over the optimizer's groups (current
    rate) and a copy of its momentum buffers."""
    classifier = self.world["classifier"]
    support = [(x[rows[i]], labels[rows[i]]) for i in draws["support"]]
    query = [(x[rows[i]], labels[rows[i]]) for i in draws["query"]]
    params = dict(classifier.named_parameters())
    copies = {k: v.clone() for k, v in classifier.named_buffers()}
    fast = lambda weights, buffers, images: torch.func.functional_call(
        classifier, {**weights, **buffers}, (images,))[0]
    group = self.optimizer.param_groups[0]
    momentum_buffers = {name: self.optimizer.state[p].get("momentum_buffer")
                        for name, p in params.items()}
    weights = dict(params)
    for _ in range(method.inner_steps):
      loss_inner = 0
      for x_s, labels_s in support:
        loss_inner += F.cross_entropy(fast(weights, copies, x_s), labels_s) / len(support)
      grads = torch.autograd.grad(loss_inner, list(weights.values()), create_graph=True)
      updated = {}
      for (name, p), g in zip(weights.items(), grads):  # DifferentiableSGD._update
        g = g + group["weight_decay"] * p
        buf = momentum_buffers[name]
        buf = g if buf is None else buf * group["momentum"] + g
        momentum_buffers[name] = buf
        g = g + group["momentum"] * buf
        updated[name] = p - group["lr"] * g
      weights = updated
    loss_outer = 0
    for x_s, labels_s in support:
      loss_outer += F.cross_entropy(classifier(x_s)[0], labels_s) / len(support)
    # tljax's statistics (see the case): the query passes update the network's
    # running statistics (TLlib: those of higher's copy, `copies`).
    buffers = dict(classifier.named_buffers())
    for x_q, labels_q in query:
      loss_outer += (F.cross_entropy(fast(weights, buffers, x_q), labels_q) * method.trade_off
                     / len(query))
    return loss_outer

  def mixstyle(self, step, method, x, labels, rows, present, draws):
    self.draws.clear()
    for layer, calls in draws.items():
      self.draws[layer] = [(torch.from_numpy(np.array(partner, np.int64)),
                            torch.from_numpy(np.array(weight, np.float64)), bool(apply))
                           for partner, weight, apply in calls]
    y, _ = self.classifier(x)
    return F.cross_entropy(y, labels)

  def ibn(self, step, method, x, labels, rows, present, draws):
    y, _ = self.classifier(x)
    return F.cross_entropy(y, labels)


# ----------------------------------------------------------------------------
# The test.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_steps_match_tllib(case):
  config = _config(case)
  batches = _batches(case, config, seed=CASES.index(case))
  run = _run_tljax(case, config, batches)
  reference = Reference(case, config, run.initial)
  start = reference.variables()
  torch_losses = [reference.step(step, batch, draws)
                  for step, (batch, draws) in enumerate(zip(batches, run.draws))]

  final = {**_variables(run.final.params, "params"),
           **_variables(run.final.model_state.get("batch_stats", {}), "batch_stats")}
  theirs = reference.variables()
  assert set(final) == set(theirs), set(final) ^ set(theirs)
  params = [k for k in theirs if k.startswith("params:")]
  stats = [k for k in theirs if k.startswith("batch_stats:")]
  state_diff = {}
  if case.name == "groupdro":
    weights = reference.domain_weights.domain_weight
    state_diff = _max_relative(
        {"state:group_weights": np.asarray(run.final.method_state["group_weights"], np.float64)},
        {"state:group_weights": (weights / weights.sum()).numpy()}, ["state:group_weights"])
  loss_diff = [abs(a - b) / abs(b) for a, b in zip(run.losses, torch_losses)]
  param_diff = _max_relative(final, theirs, params)
  stat_diff = _max_relative(final, theirs, stats)
  moved = _max_relative(theirs, start, params)
  largest = lambda d: max(d.values()) if d else float("nan")
  RESULTS[case.name] = {"steps": STEPS, "loss": max(loss_diff), "params": largest(param_diff),
                        "stats": largest(stat_diff), "state": largest(state_diff),
                        "moved": min(moved.values()), "source": case.source,
                        "difference": case.difference}
  worst = lambda d: max(d, key=d.get)
  assert max(loss_diff) < TOLERANCE, (np.argmax(loss_diff), run.losses, torch_losses)
  for kind, d in (("params", param_diff), ("stats", stat_diff), ("state", state_diff)):
    assert not d or max(d.values()) < TOLERANCE, (kind, worst(d), max(d.values()))
  # Not vacuous: every parameter moved ...
  assert min(moved.values()) > 1e-4, (worst({k: -v for k, v in moved.items()}),
                                      min(moved.values()))
  # ... and the method's own mechanism acted.
  if case.signal:
    what, test = case.signal
    assert test(run), f"{case.name}: expected {what}"
