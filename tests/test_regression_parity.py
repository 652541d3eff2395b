"""Trajectory parity of the regression methods: tljax's ERM (and ERM with
the target batch through the network, TLlib's loop), DD and RSD on a
regression task (`configs/<method>.py:sprites_c2n`) against PyTorch
restatements of TLlib's image-regression examples
(`examples/domain_adaptation/image_regression/{erm,dd,rsd}.py`) and the
modules they use: `Regressor` (`tllib/modules/regressor.py`), `ImageRegressor`
and `RegressionMarginDisparityDiscrepancy` (`tllib/alignment/mdd.py`), its
`WarmStartGradientReverseLayer` (`tllib/modules/grl.py`: the coefficient of
step `i` is computed in the forward pass, then `model.step()` advances it) and
`RepresentationSubspaceDistance` (`tllib/alignment/rsd.py`), written here
from TLlib's code.

Both sides start from the same weights (tljax's initial variables loaded into
the PyTorch modules), see the same batches (float factors in [0, 1], 3 per
example, as the sprites tasks' scale and position) and compute in float64
(JAX x64, torch `.double()`), over five steps. The network is a two-block
`small_cnn` on 8x8 images (16 features: a 2x2 map of 4 channels, flattened),
8 examples per domain, with the bottleneck and heads each method's config
builds, at small widths. TLlib's convolutional layers (ERM's bottleneck, DD's
bottleneck and both heads: 3x3, padding 1) take those features as a 1x1 map,
as tljax's do the pooled features of its backbones: there only the centre
tap sees data, and tljax's dense layers are compared with it. The optimizer
on both sides is TLlib's: SGD with Nesterov momentum and weight decay over
`get_parameters()`'s groups (the backbone at 0.1x, as `dsprites_*` sets in
`config.param_groups`), under `LambdaLR(lambda x: lr (1 + gamma x)^-decay)`
stepped after each update.

Compared, at 1e-9 relative (max |tljax - torch| / max |torch| per tensor):
every step's loss and the term's own values (DD's disparity and reversal
coefficient, RSD's distance and base mismatch), and after the last step every
parameter and BatchNorm running statistic (the biases that a BatchNorm
follows in DD's heads, zero at the start and given no gradient but rounding,
are checked to stay at rounding level instead). Each case also checks that it
is not vacuous (every parameter moved) and that its mechanism acted. `RESULTS`
keeps, per case, the measurements of `tests/test_trajectory.py`'s table
('state': DD's reversal coefficient over the steps; 'terms': the term's
values), to be merged into it; `Case.difference` names what a case runs with
where tljax and TLlib's code differ.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from typing import Any, Callable

import flax.traverse_util
import ml_collections
import numpy as np
import pytest

from conftest import REPO
from tljax.data import task as task_lib

sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install tljax[test])")
from benchmarks import torch_reference as ref  # noqa: E402  pylint: disable=g-import-not-at-top
# The trajectory harness: its batches, tljax run and measure.
from test_trajectory import (  # noqa: E402  pylint: disable=g-import-not-at-top
    Data, _relative_differences, _run_method)

tnn = torch.nn
F = torch.nn.functional

FACTORS = ("scale", "position x", "position y")
BATCH = 8
IMAGE = (8, 8, 3)
WIDTHS = (4, 4)
FEATURES = 16  # the small CNN's features on 8x8 images: 2x2 x 4 channels
STEPS = 5
LR = 0.1  # TLlib's image-regression rate
GAMMA = 0.01  # TLlib: 0.0001; larger here so that an off-by-one in the schedule shows
DECAY = 0.75
MOMENTUM = 0.9
BACKBONE_LR = 0.1  # TLlib's `get_parameters()`: the backbone at 0.1x (finetune=True)
TOLERANCE = 1e-9

RESULTS: dict[str, dict[str, Any]] = {}
# The version tljax's default follows (the form of test_trajectory.py's `DEFAULT_FOLLOWS`).
DEFAULT_FOLLOWS = {
    "source_only_sprites": "TLlib's `Regressor` but for its bottleneck BatchNorm's eps: "
                           "`nn.BatchNorm2d(feature_dim, feature_dim)` passes the width as eps "
                           "(512 for ResNet-18); tljax keeps 1e-5, and the case runs 1e-5 on "
                           "both sides",
    "dd": "TLlib's code (`RegressionMarginDisparityDiscrepancy`, L1 disparity, margin 1)",
    "rsd": "TLlib's code (`RepresentationSubspaceDistance`), which the authors' function matches",
}


pytestmark = pytest.mark.usefixtures("float64_parity")


# ----------------------------------------------------------------------------
# Cases.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One TLlib image-regression example. `config` adjusts
  `configs/<module>.py:sprites_c2n` (after the shared small network, batch and
  optimizer of `_config`); `loop` is the example's training loop
  (`Reference.<loop>`); `difference` names a documented difference the case
  runs with; `terms` are the step metrics compared with the reference's."""

  name: str
  module: str
  source: str
  loop: str
  config: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  difference: str = ""
  terms: tuple[str, ...] = ()
  # Parameters whose gradient is zero but for rounding, which start at zero:
  # the biases of linear layers a BatchNorm follows (TLlib's heads start
  # their biases at 0). They stay at rounding level on both sides, where a
  # relative comparison measures only rounding.
  cancelled: str = ""


def _erm(config):
  # TLlib's `Regressor`: a bottleneck as wide as the backbone's features.
  config.model.bottleneck_dim = FEATURES


def _erm_target_pass(config):
  _erm(config)
  config.method.forward = "per_domain"


def _dd(config):
  config.model.bottleneck_dim = 12  # both heads follow it (configs/dd.py)
  assert config.model.head_hidden == config.method.head_width == 12
  # TLlib: 1000 steps to 0.1; short, so that the coefficient is far from 0 within the run.
  config.method.grl_max_steps = 2


def _rsd(config):
  # Four times the batch (TLlib: 256 for 36): two batches' subspaces in fewer
  # features must share directions, cosines of 1 where TLlib's gradient is
  # not finite and tljax's is regularised (tljax/losses/rsd.py).
  config.model.bottleneck_dim = 4 * BATCH


# TLlib's `Regressor` builds its default bottleneck's BatchNorm as
# `nn.BatchNorm2d(feature_dim, feature_dim)`: the second argument is `eps`.
ERM_EPS = ("TLlib's Regressor builds its bottleneck BatchNorm as nn.BatchNorm2d(feature_dim, "
           "feature_dim), whose second argument is eps, so TLlib's erm.py normalises with eps "
           "512 (ResNet-18's width) where tljax uses 1e-5; both sides use 1e-5 here")

CASES = [
    Case("source_only_sprites", "source_only", "TLlib image_regression erm.py, Regressor", "erm",
         _erm, difference=ERM_EPS + "; TLlib's loop also passes the target batch in training "
         "mode, which moves only the running statistics: tljax's parameters are checked against "
         "that loop too, its statistics against the loop without the target pass (tljax's ERM "
         "never reads the target; TLlib's loop is source_only_joint_bn_sprites)"),
    Case("source_only_joint_bn_sprites", "source_only_joint_bn",
         "TLlib image_regression erm.py, Regressor (forward='per_domain': the target batch "
         "through the network after the source batch)", "erm_target_pass", _erm_target_pass,
         difference=ERM_EPS),
    Case("dd", "dd", "TLlib image_regression dd.py, ImageRegressor, "
         "RegressionMarginDisparityDiscrepancy", "dd", _dd,
         difference="TLlib's convolutional bottleneck and heads act on the backbone's map "
         "(ResNet-18 at 128 px: 4x4), tljax's dense ones on pooled features, a 1x1 map, where a "
         "padded 3x3 convolution is a dense layer of its centre tap: both sides run the 1x1 map",
         terms=("dd", "grl_coeff"),
         cancelled=r"params:(classifier/head|method/dd/adv_head)/linear[01]/bias"),
    Case("rsd", "rsd", "TLlib image_regression rsd.py, RepresentationSubspaceDistance", "rsd",
         _rsd, terms=("rsd", "bmp")),
]


def _config(case: Case) -> ml_collections.ConfigDict:
  config = importlib.import_module(f"configs.{case.module}").get_config("sprites_c2n")
  if case.module == "source_only_joint_bn":
    # The regression recipe of ERM (its config names no task recipe).
    importlib.import_module("configs.source_only").erm_regression(config, "sprites_c2n")
  config.model.name = "small_cnn"
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"widths": WIDTHS, "kernel_sizes": (3,) * len(WIDTHS), "conv_impl": "xla"})
  config.model.dtype = "float64"
  config.batch_size = BATCH
  config.optimizer.learning_rate = LR
  config.optimizer.momentum = MOMENTUM
  config.schedule.gamma = GAMMA
  config.schedule.power = DECAY
  config.param_groups = (("classifier/backbone/.*", BACKBONE_LR), (".*", 1.0))
  case.config(config)
  assert config.label_kind == "regression" and config.regression_loss == "l2"
  assert config.model.output_activation == "sigmoid" and not config.model.bottleneck_dropout
  return config


def _data(seed: int) -> Data:
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(STEPS):
    batches.append({
        "source": {"image": rng.standard_normal((BATCH, *IMAGE)),
                   "label": rng.uniform(0.0, 1.0, (BATCH, len(FACTORS)))},
        "target": {"image": rng.standard_normal((BATCH, *IMAGE)) * 1.5 + 0.5}})
  return Data(batches)


# ----------------------------------------------------------------------------
# The PyTorch side: TLlib's modules and loops.
# ----------------------------------------------------------------------------


def regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin):
  """TLlib's `RegressionMarginDisparityDiscrepancy` (L1 disparity, mean)."""
  source = -margin * F.l1_loss(y_s_adv, y_s.detach(), reduction="none")
  target = F.l1_loss(y_t_adv, y_t.detach(), reduction="none")
  return (source + target).mean()


def representation_subspace_distance(f_s, f_t):
  """TLlib's `RepresentationSubspaceDistance` as its two parts and the sines
  `(RSD, BMP, sines)`; the loop weighs the parts (`rsd + trade_off_bmp * bmp`).
  `torch.svd`'s
  reduced SVD (here `torch.linalg.svd(full_matrices=False)`, whose `Vh` is
  `torch.svd`'s `V` transposed)."""
  u_s = torch.linalg.svd(f_s.t(), full_matrices=False)[0]
  u_t = torch.linalg.svd(f_t.t(), full_matrices=False)[0]
  p_s, cosine, p_t_h = torch.linalg.svd(torch.mm(u_s.t(), u_t), full_matrices=False)
  sine = torch.sqrt(1 - torch.pow(cosine, 2))
  rsd = torch.norm(sine, 1)
  bmp = torch.norm(torch.abs(p_s) - torch.abs(p_t_h.t()), 2)
  return rsd, bmp, sine


class MapSmallCNN(ref.SmallCNN):
  """tljax's `small_cnn`, its flattened features as a 1x1 map (TLlib's
  regressors take the backbone's map)."""

  def forward(self, x):
    return super().forward(x)[:, :, None, None]


def _conv(in_channels, out_channels):
  return tnn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)


def image_regressor_head(width, num_factors):
  """`ImageRegressor`'s head (and adversarial head)."""
  return tnn.Sequential(_conv(width, width), tnn.BatchNorm2d(width), tnn.ReLU(),
                        _conv(width, width), tnn.BatchNorm2d(width), tnn.ReLU(),
                        tnn.AdaptiveAvgPool2d(output_size=(1, 1)), tnn.Flatten(),
                        tnn.Linear(width, num_factors), tnn.Sigmoid())


class Regressor(tnn.Module):
  """TLlib's `Regressor` / `ImageRegressor`'s main path: `(predictions, features)`."""

  def __init__(self, backbone, bottleneck, head):
    super().__init__()
    self.backbone, self.bottleneck, self.head = backbone, bottleneck, head

  def forward(self, x):
    f = self.bottleneck(self.backbone(x))
    return self.head(f), f


# tljax module paths -> the PyTorch modules TLlib's examples build (the rest
# share their names: the backbone's `conv1`, `bn1`, ...).
_REGRESSOR_HEAD = {"linear0": "0", "bn0": "1", "linear1": "3", "bn1": "4", "output": "8"}
MODULES = {
    "erm": {"classifier/bottleneck/linear": "classifier.bottleneck.0",
            "classifier/bottleneck/bn": "classifier.bottleneck.1",
            "classifier/head": "classifier.head.0"},
    "dd": {"classifier/bottleneck/linear": "classifier.bottleneck.0",
           "classifier/bottleneck/bn": "classifier.bottleneck.1",
           **{f"classifier/head/{k}": f"classifier.head.{v}" for k, v in _REGRESSOR_HEAD.items()},
           **{f"method/dd/adv_head/{k}": f"method.dd.adv_head.{v}"
              for k, v in _REGRESSOR_HEAD.items()}},
    "rsd": {"classifier/bottleneck/linear": "classifier.bottleneck.2",
            "classifier/head": "classifier.head.0"},
}
_TENSORS = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}


class Reference:
  """The modules, optimizer and scheduler of one TLlib image-regression
  example, loaded from tljax's initial variables, and its loop."""

  def __init__(self, case: Case, config: ml_collections.ConfigDict):
    self.case, self.config = case, config
    self.kind = case.loop if case.loop in MODULES else "erm"
    model, method = config.model, config.method
    factors = len(FACTORS)
    torch.manual_seed(0)  # the convolutions' off-centre taps, which see only padding
    backbone = MapSmallCNN(WIDTHS, IMAGE[2])
    world = {}
    if self.kind == "erm":
      # `Regressor`'s default bottleneck (its BatchNorm's eps: see ERM_EPS).
      bottleneck = tnn.Sequential(_conv(FEATURES, FEATURES), tnn.BatchNorm2d(FEATURES),
                                  tnn.ReLU(), tnn.AdaptiveAvgPool2d(output_size=(1, 1)),
                                  tnn.Flatten())
      head = tnn.Sequential(tnn.Linear(FEATURES, factors), tnn.Sigmoid())
    elif self.kind == "dd":
      width = model.bottleneck_dim
      bottleneck = tnn.Sequential(_conv(FEATURES, width), tnn.BatchNorm2d(width), tnn.ReLU())
      head = image_regressor_head(width, factors)
      world["method"] = tnn.ModuleDict({"dd": tnn.ModuleDict(
          {"adv_head": image_regressor_head(width, factors)})})
      self.grl = ref.WarmStartGRL(method.grl_alpha, method.grl_lo, method.grl_hi,
                                  method.grl_max_steps, auto_step=False)
    else:  # rsd.py's bottleneck
      width = model.bottleneck_dim
      bottleneck = tnn.Sequential(tnn.AdaptiveAvgPool2d(output_size=(1, 1)), tnn.Flatten(),
                                  tnn.Linear(FEATURES, width), tnn.ReLU())
      head = tnn.Sequential(tnn.Linear(width, factors), tnn.Sigmoid())
    world["classifier"] = Regressor(backbone, bottleneck, head)
    self.world = tnn.ModuleDict(world).double()
    self.regressor = self.world["classifier"]
    # `get_parameters()`: backbone, bottleneck, head (, adv_head).
    groups = [{"params": backbone.parameters(), "lr": BACKBONE_LR},
              {"params": bottleneck.parameters(), "lr": 1.0},
              {"params": head.parameters(), "lr": 1.0}]
    if "method" in self.world:
      groups.append({"params": self.world["method"].parameters(), "lr": 1.0})
    self.optimizer = torch.optim.SGD(groups, LR, momentum=MOMENTUM,
                                     weight_decay=config.optimizer.weight_decay, nesterov=True)
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda x: LR * (1.0 + GAMMA * float(x)) ** (-DECAY))

  # ------------------------------------------------------------- variables

  def _tensor(self, collection: str, path: tuple[str, ...]):
    """The module and tensor that hold tljax's leaf `collection:path`."""
    prefix = "/".join(path[:-1])
    module = self.world.get_submodule(MODULES[self.kind].get(prefix, prefix.replace("/", ".")))
    name = _TENSORS[path[-1]]
    assert (collection == "batch_stats") == name.startswith("running_"), (collection, path)
    return module, getattr(module, name)

  def load(self, variables: dict) -> None:
    """tljax's variables into the modules; a dense kernel into a 3x3
    convolution's centre tap."""
    covered = set()
    for collection in ("params", "batch_stats"):
      for path, value in flax.traverse_util.flatten_dict(variables[collection]).items():
        module, tensor = self._tensor(collection, path)
        value = np.asarray(value, np.float64)
        with torch.no_grad():
          if isinstance(module, tnn.Conv2d) and value.ndim == 2:
            tensor[:, :, 1, 1] = torch.from_numpy(value.T.copy())
          else:
            tensor.copy_(torch.from_numpy(ref.to_torch(value, path[-1]).copy()))
        covered.add(id(tensor))
    names = {id(t): n for n, t in self.world.state_dict(keep_vars=True).items()}
    missing = sorted(n for i, n in names.items()
                     if i not in covered and not n.endswith("num_batches_tracked"))
    assert not missing, f"reference tensors tljax does not have: {missing}"

  def variables(self, like: dict) -> dict[str, np.ndarray]:
    """The tensors of tljax's leaves in `like` (variables), keyed as
    `test_trajectory._tljax_variables` keys them."""
    out = {}
    for collection in ("params", "batch_stats"):
      for path, leaf in flax.traverse_util.flatten_dict(like[collection]).items():
        module, tensor = self._tensor(collection, path)
        value = tensor.detach().numpy().copy()
        if isinstance(module, tnn.Conv2d) and np.ndim(leaf) == 2:
          value = value[:, :, 1, 1].T
        elif path[-1] == "kernel":
          value = ref.from_torch(value, "weight")
        name = "weight" if path[-1] in ("kernel", "scale") else path[-1]
        out[f"{collection}:" + "/".join((*path[:-1], name))] = value
    return out

  # ------------------------------------------------------------- TLlib's loops

  def erm(self, x_s, labels_s, x_t):
    """erm.py without its target pass (see the case)."""
    y_s, _ = self.regressor(x_s)
    return F.mse_loss(y_s, labels_s), {}

  def erm_target_pass(self, x_s, labels_s, x_t):
    """erm.py: the target batch too goes through the regressor (for its MAE meter)."""
    y_s, _ = self.regressor(x_s)
    self.regressor(x_t)
    return F.mse_loss(y_s, labels_s), {}

  def dd(self, x_s, labels_s, x_t):
    """dd.py: `ImageRegressor` (`GeneralModule.forward`) over `[source; target]`."""
    regressor, adv_head = self.regressor, self.world["method"]["dd"]["adv_head"]
    features = regressor.bottleneck(regressor.backbone(torch.cat([x_s, x_t], dim=0)))
    outputs = regressor.head(features)
    outputs_adv = adv_head(self.grl(features))
    y_s, y_t = outputs.chunk(2, dim=0)
    y_s_adv, y_t_adv = outputs_adv.chunk(2, dim=0)
    mse_loss = F.mse_loss(y_s, labels_s)
    transfer_loss = regression_mdd(y_s, y_s_adv, y_t, y_t_adv, self.config.method.margin)
    loss = mse_loss - transfer_loss * self.config.method.trade_off
    self.grl.step()  # `model.step()`, after the forward pass
    # The L1 disparities' signs, which rounding must not decide (no ties).
    self.closest = min(float(torch.min(torch.abs(outputs_adv - outputs).detach())),
                       getattr(self, "closest", np.inf))
    return loss, {"dd": float(transfer_loss.detach()), "grl_coeff": self.grl.coeff}

  def rsd(self, x_s, labels_s, x_t):
    """rsd.py: one pass per domain."""
    y_s, f_s = self.regressor(x_s)
    _, f_t = self.regressor(x_t)
    mse_loss = F.mse_loss(y_s, labels_s)
    method = self.config.method
    distance, mismatch, sines = representation_subspace_distance(f_s, f_t)
    # Where a sine is 0 TLlib's gradient is not finite and tljax's regularised.
    self.smallest_sine = min(float(torch.min(sines).detach()),
                             getattr(self, "smallest_sine", np.inf))
    loss = mse_loss + (distance + method.bmp_trade_off * mismatch) * method.trade_off
    return loss, {"rsd": float(distance.detach()), "bmp": float(mismatch.detach())}

  def run(self, batches: list[dict]) -> tuple[list[float], list[dict]]:
    losses, metrics = [], []
    to = lambda x: torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
    for batch in batches:
      x_s, x_t = to(batch["source"]["image"]), to(batch["target"]["image"])
      labels_s = torch.from_numpy(np.asarray(batch["source"]["label"], np.float64))
      self.world.train()
      self.optimizer.zero_grad()
      loss, step_metrics = getattr(self, self.case.loop)(x_s, labels_s, x_t)
      loss.backward()
      self.optimizer.step()
      self.scheduler.step()
      losses.append(float(loss.detach()))
      metrics.append(step_metrics)
    return losses, metrics


# ----------------------------------------------------------------------------
# The test.
# ----------------------------------------------------------------------------


def _relative(ours: list[float], theirs: list[float]) -> float:
  """The largest relative difference of one step's value."""
  return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs))


def _relative_series(ours: list[float], theirs: list[float]) -> float:
  """Of the steps' values as one tensor (max |a - b| / max |b|)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_regression_trajectory_matches_tllib(case):
  config = _config(case)
  data = _data(seed=CASES.index(case))
  labels = task_lib.LabelSpace(task_lib.REGRESSION, FACTORS)
  run = _run_method(config, data, labels=labels)
  assert not any(run.masks), "no dropout in these networks"

  reference = Reference(case, config)
  reference.load(run.initial.variables)
  start = reference.variables(run.initial.variables)
  torch_losses, torch_metrics = reference.run(data.batches)
  theirs = reference.variables(run.initial.variables)
  ours = {k: v for k, v in run.snapshots[STEPS].items() if not k.startswith("state:")}
  assert set(ours) == set(theirs), set(ours) ^ set(theirs)

  cancelled = lambda key: bool(case.cancelled) and re.fullmatch(case.cancelled, key) is not None
  groups = {kind: [k for k in ours if k.startswith(kind + ":") and not cancelled(k)]
            for kind in ("params", "batch_stats")}
  for key in filter(cancelled, ours):
    assert max(np.max(np.abs(ours[key])), np.max(np.abs(theirs[key]))) < 1e-12, key
  diff = {kind: _relative_differences(ours, theirs, keys) for kind, keys in groups.items()}
  # The term's values at every step (DD: the reversal coefficient, the
  # reference's state; RSD: its two parts).
  terms = {name: _relative_series([m[name] for m in run.metrics],
                                  [m[name] for m in torch_metrics]) for name in case.terms}
  moved = _relative_differences(theirs, start, groups["params"])
  loss = _relative(run.losses, torch_losses)
  RESULTS[case.name] = {"steps": STEPS, "loss": loss, "params": max(diff["params"].values()),
                        "stats": max(diff["batch_stats"].values(), default=float("nan")),
                        "state": terms.get("grl_coeff", float("nan")),
                        "terms": max(terms.values(), default=float("nan")),
                        "moved": min(moved.values()), "source": case.source,
                        "difference": case.difference}
  assert loss < TOLERANCE, (run.losses, torch_losses)
  for name, value in terms.items():
    assert value < TOLERANCE, (name, [m[name] for m in run.metrics],
                               [m[name] for m in torch_metrics])
  for kind, d in diff.items():
    for key, value in d.items():
      assert value < TOLERANCE, (kind, key, value)
  # Not vacuous: every parameter moved ...
  for key, change in moved.items():
    assert change > 1e-5, (key, change)
  # ... and each method's own mechanism acted.
  if case.loop == "dd":
    coefficients = [m["grl_coeff"] for m in torch_metrics]
    assert coefficients[0] == 0 and coefficients[-1] > 0.05, coefficients
    assert reference.closest > 1e-6, reference.closest
  if case.loop == "rsd":
    assert reference.smallest_sine > 1e-3, reference.smallest_sine
  if case.loop == "erm":
    # TLlib's own loop, whose target pass moves only the running statistics.
    tllib = Reference(dataclasses.replace(case, loop="erm_target_pass"), config)
    tllib.load(run.initial.variables)
    tllib.run(data.batches)
    exact = tllib.variables(run.initial.variables)
    assert max(_relative_differences(ours, exact, groups["params"]).values()) < TOLERANCE
    assert min(_relative_differences(ours, exact, groups["batch_stats"]).values()) > 1e-3
