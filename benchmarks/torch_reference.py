"""TLlib's definitions restated in PyTorch: the reference tljax is checked and timed against.

TLlib itself no longer imports (NumPy >= 1.24), so its pieces are written here
from its published definitions: the loss modules (`DomainAdversarialLoss`,
`ConditionalDomainAdversarialLoss`, MK-MMD / JMMD with their index matrices,
`ClassificationMarginDisparityDiscrepancy`, `MinimumClassConfusionLoss`,
`AdaptiveFeatureNorm`, `BatchSpectralPenalizationLoss`), its
`WarmStartGradientReverseLayer` (the coefficient of step `i` is computed before
`auto_step` / `step()` advances it), its domain discriminator, bottlenecks and
heads, and each example's training loop (`Reference`): the forward order (one
pass over `[source; target]`, or one per domain for DAN and AFN; ERM and BSP's
pre-training pass the source batch alone), `torch.optim.SGD` over
`get_parameters()`'s groups, and `LambdaLR(lambda x: lr * (1 + gamma x)^-decay)`
stepped after each update (AFN: no scheduler, momentum 0.9 only for the
bottleneck and head groups, no nesterov). The network is tljax's `small_cnn`
classifier, so tljax's variables load into it (`Reference.load`), or, for a
ResNet backbone, torchvision's (randomly initialised; for timing only).

Used by `tests/test_trajectory.py` (float64 trajectories against tljax's step)
and `benchmarks.flax_vs_torch` (the digits step of each method, and ResNet-50 adaptation
steps fed by their input pipelines, timed side by side).
Needs PyTorch (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import math
import re

import flax.traverse_util
import ml_collections
import numpy as np
import torch
import torchvision
from torchvision import transforms

tnn = torch.nn
F = torch.nn.functional

# The terms `Reference` restates (a config's method is ERM or a '+'-sum of these).
TERMS = ("dann", "cdan", "mdd", "dan", "jan", "mcc", "afn", "bsp")
AFN_MOMENTUM = 0.9  # TLlib's AFN example sets it on the bottleneck and head groups only


class _ReverseGradient(torch.autograd.Function):
  """TLlib's `GradientReverseFunction`."""

  @staticmethod
  def forward(ctx, x, coeff):
    ctx.coeff = coeff
    return x * 1.0

  @staticmethod
  def backward(ctx, grad):
    return grad.neg() * ctx.coeff, None


class WarmStartGRL(tnn.Module):
  """TLlib's `WarmStartGradientReverseLayer`; `coeff` keeps the coefficient of
  the latest forward pass."""

  def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=False):
    super().__init__()
    self.alpha, self.lo, self.hi, self.max_iters, self.auto_step = alpha, lo, hi, max_iters, auto_step
    self.iter_num, self.coeff = 0, None

  def forward(self, x):
    self.coeff = float(2.0 * (self.hi - self.lo)
                       / (1.0 + np.exp(-self.alpha * self.iter_num / self.max_iters))
                       - (self.hi - self.lo) + self.lo)
    if self.auto_step:
      self.step()
    return _ReverseGradient.apply(x, self.coeff)

  def step(self):
    self.iter_num += 1


class MaskedDropout(tnn.Module):
  """`nn.Dropout` that drops the units tljax dropped in the same call
  (`masks[key]`: the kept units of each call, in order), or ordinary dropout
  when `masks` is None."""

  def __init__(self, p: float, key: str, masks: dict | None):
    super().__init__()
    self.p, self.key, self.masks = p, key, masks

  def forward(self, x):
    if self.masks is None:
      return F.dropout(x, self.p, self.training)
    keep = torch.from_numpy(np.array(self.masks[self.key].pop(0))).to(x.dtype)
    return x * keep / (1.0 - self.p)


class SmallCNN(tnn.Module):
  """tljax's `small_cnn`: (3x3 conv without bias -> BatchNorm -> ReLU -> 2x2 max-pool,
  'SAME': an odd size keeps its last row and column) per width, flattened in
  NHWC order."""

  def __init__(self, widths, channels=3):
    super().__init__()
    self.widths = widths
    for i, width in enumerate(widths, 1):
      setattr(self, f"conv{i}", tnn.Conv2d(channels, width, 3, padding=1, bias=False))
      setattr(self, f"bn{i}", tnn.BatchNorm2d(width))
      channels = width

  def forward(self, x):
    for i in range(1, len(self.widths) + 1):
      x = F.max_pool2d(F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))), 2,
                       ceil_mode=True)
    return x.permute(0, 2, 3, 1).flatten(1)


def torchvision_backbone(name: str) -> tuple[tnn.Module, int]:
  """`(module, features)`: torchvision's `name` (a ResNet) up to its global
  average pool, as TLlib's backbones (`fc` replaced by the identity); random
  initialisation. Only the timed steps use it (`benchmarks.torch_steps`), not the
  parity tests: tljax's variables load into `SmallCNN` only."""
  if not name.startswith(("resnet", "resnext", "wide_resnet")):
    raise ValueError(f"no torchvision counterpart for backbone {name!r}: a ResNet is needed")
  network = getattr(torchvision.models, name)()
  features = network.fc.in_features
  network.fc = tnn.Identity()
  return network, features


class Bottleneck(tnn.Module):
  """TLlib's bottlenecks: Linear -> [BatchNorm1d] -> ReLU -> [Dropout], and AFN's
  block, whose kept units are rescaled by `sqrt(1 - p)` in training."""

  def __init__(self, in_features, dim, norm, dropout, l2_preserving, masks):
    super().__init__()
    self.linear = tnn.Linear(in_features, dim)
    self.bn = tnn.BatchNorm1d(dim) if norm else None
    self.dropout = MaskedDropout(dropout, "bottleneck/Dropout_0", masks) if dropout else None
    self.p, self.l2_preserving = dropout, l2_preserving

  def forward(self, x):
    f = self.linear(x)
    if self.bn is not None:
      f = self.bn(f)
    f = F.relu(f)
    if self.dropout is not None:
      f = self.dropout(f)
      if self.l2_preserving and self.training:
        f = f * math.sqrt(1 - self.p)
    return f


class TwoLayerHead(tnn.Module):
  """TLlib's MDD heads: Linear -> ReLU -> Dropout -> Linear."""

  def __init__(self, in_features, width, num_classes, dropout, key, masks):
    super().__init__()
    self.hidden = tnn.Linear(in_features, width)
    self.dropout = MaskedDropout(dropout, key, masks)
    self.linear = tnn.Linear(width, num_classes)

  def forward(self, x):
    return self.linear(self.dropout(F.relu(self.hidden(x))))


class Classifier(tnn.Module):
  """TLlib's `Classifier`: backbone -> bottleneck -> head, returning `(y, f)`."""

  def __init__(self, model: ml_collections.ConfigDict, masks: dict | None, num_classes: int,
               image: tuple[int, int, int]):
    super().__init__()
    if model.name == "small_cnn":
      widths = tuple(model.backbone_kwargs.widths)
      self.backbone = SmallCNN(widths, image[2])
      height, width = image[:2]
      for _ in widths:  # each block halves the map (2x2 max-pool, 'SAME': ceil)
        height, width = -(-height // 2), -(-width // 2)
      features = height * width * widths[-1]
    else:
      self.backbone, features = torchvision_backbone(model.name)
    if model.bottleneck_dim:
      self.bottleneck = Bottleneck(features, model.bottleneck_dim, model.bottleneck_norm,
                                   model.bottleneck_dropout,
                                   model.bottleneck_l2_preserving_dropout, masks)
      features = model.bottleneck_dim
    else:
      self.bottleneck = tnn.Identity()
    if model.head_hidden:
      self.head = TwoLayerHead(features, model.head_hidden, num_classes, model.head_dropout,
                               "head/Dropout_0", masks)
    else:
      self.head = tnn.Linear(features, num_classes)

  def forward(self, x):
    f = self.bottleneck(self.backbone(x))
    return self.head(f), f


class DomainDiscriminator(tnn.Module):
  """TLlib's `DomainDiscriminator(batch_norm=True, sigmoid=True)`."""

  def __init__(self, in_feature, hidden_size):
    super().__init__()
    self.linear0, self.bn0 = tnn.Linear(in_feature, hidden_size), tnn.BatchNorm1d(hidden_size)
    self.linear1, self.bn1 = tnn.Linear(hidden_size, hidden_size), tnn.BatchNorm1d(hidden_size)
    self.output = tnn.Linear(hidden_size, 1)

  def forward(self, x):
    x = F.relu(self.bn0(self.linear0(x)))
    x = F.relu(self.bn1(self.linear1(x)))
    return torch.sigmoid(self.output(x))


def entropy(p):
  """TLlib's `entropy` (epsilon 1e-5)."""
  return -(p * torch.log(p + 1e-5)).sum(dim=1)


def _binary_cross_entropy(d, target, weight=None):
  """`F.binary_cross_entropy`, outside autocast (which refuses it on CUDA): the
  discriminator's sigmoid outputs are scored in fp32 at least."""
  dtype = torch.promote_types(d.dtype, torch.float32)
  with torch.autocast(d.device.type, enabled=False):
    return F.binary_cross_entropy(d.to(dtype), target.to(dtype),
                                  None if weight is None else weight.to(dtype))


def domain_adversarial_loss(discriminator, grl, f_s, f_t):
  """TLlib's `DomainAdversarialLoss` (sigmoid outputs, mean reduction)."""
  d = discriminator(grl(torch.cat((f_s, f_t), dim=0)))
  d_s, d_t = d.chunk(2, dim=0)
  return 0.5 * (_binary_cross_entropy(d_s, torch.ones_like(d_s))
                + _binary_cross_entropy(d_t, torch.zeros_like(d_t)))


def conditional_domain_adversarial_loss(discriminator, grl, g_s, f_s, g_t, f_t, entropy_conditioning):
  """TLlib's `ConditionalDomainAdversarialLoss` with the (non-randomized) multilinear map."""
  f = torch.cat((f_s, f_t), dim=0)
  g = F.softmax(torch.cat((g_s, g_t), dim=0), dim=1).detach()
  h = grl(torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).view(f.size(0), -1))
  d = discriminator(h)
  weight = 1.0 + torch.exp(-entropy(g))
  weight = weight / torch.sum(weight) * f.size(0)
  label = torch.cat((torch.ones_like(d[:g_s.size(0)]), torch.zeros_like(d[g_s.size(0):])))
  if entropy_conditioning:
    return _binary_cross_entropy(d, label, weight.view_as(d))
  return _binary_cross_entropy(d, label)


def gaussian_kernel(x, alpha=1.0, sigma=None):
  """TLlib's `GaussianKernel` (adaptive bandwidth unless `sigma` is given)."""
  l2 = ((x.unsqueeze(0) - x.unsqueeze(1)) ** 2).sum(2)
  sigma_square = alpha * torch.mean(l2.detach()) if sigma is None else sigma * sigma
  return torch.exp(-l2 / (2 * sigma_square))


def index_matrix(n, linear, dtype=torch.float64):
  """TLlib's `_update_index_matrix`."""
  m = torch.zeros(2 * n, 2 * n, dtype=dtype)
  if linear:
    for i in range(n):
      s1, s2 = i, (i + 1) % n
      t1, t2 = s1 + n, s2 + n
      m[s1, s2] = m[t1, t2] = 1.0 / n
      m[s1, t2] = m[s2, t1] = -1.0 / n
  else:
    for i in range(n):
      for j in range(n):
        if i != j:
          m[i, j] = m[i + n, j + n] = 1.0 / (n * (n - 1))
        m[i, j + n] = m[i + n, j] = -1.0 / (n * n)
  return m


def joint_mmd(z_s, z_t, layer_kernels, linear):
  """TLlib's `JointMultipleKernelMaximumMeanDiscrepancy` (MK-MMD with one layer)."""
  n = z_s[0].size(0)
  kernel_matrix = torch.ones(2 * n, 2 * n, dtype=z_s[0].dtype, device=z_s[0].device)
  for layer_s, layer_t, kernels in zip(z_s, z_t, layer_kernels):
    features = torch.cat([layer_s, layer_t], dim=0)
    kernel_matrix = kernel_matrix * sum(kernel(features) for kernel in kernels)
  index = index_matrix(n, linear, kernel_matrix.dtype).to(kernel_matrix.device)
  return (kernel_matrix * index).sum() + 2.0 / float(n - 1)


def mdd_discrepancy(y_s, y_s_adv, y_t, y_t_adv, margin):
  """TLlib's `ClassificationMarginDisparityDiscrepancy`."""
  shift_log = lambda x: torch.log(torch.clamp(x + 1e-6, max=1.0))
  source = -margin * F.cross_entropy(y_s_adv, y_s.max(dim=1)[1], reduction="none")
  target = -F.nll_loss(shift_log(1.0 - F.softmax(y_t_adv, dim=1)), y_t.max(dim=1)[1],
                       reduction="none")
  return (source + target).mean()


def minimum_class_confusion(logits, temperature):
  """TLlib's `MinimumClassConfusionLoss`."""
  batch_size, num_classes = logits.shape
  predictions = F.softmax(logits / temperature, dim=1)
  weight = 1 + torch.exp(-entropy(predictions).detach())
  weight = (batch_size * weight / torch.sum(weight)).unsqueeze(dim=1)
  confusion = torch.mm((predictions * weight).transpose(1, 0), predictions)
  confusion = confusion / torch.sum(confusion, dim=1)
  return (torch.sum(confusion) - torch.trace(confusion)) / num_classes


def adaptive_feature_norm(f, delta):
  """TLlib's `AdaptiveFeatureNorm`."""
  radius = f.norm(p=2, dim=1).detach() + delta
  return ((f.norm(p=2, dim=1) - radius) ** 2).mean()


def batch_spectral_penalization(f_s, f_t):
  """TLlib's `BatchSpectralPenalizationLoss` (k = 1)."""
  s_s = torch.linalg.svdvals(f_s)
  s_t = torch.linalg.svdvals(f_t)
  return s_s[0] ** 2 + s_t[0] ** 2


# ----------------------------------------------------------------------------
# One reference run: TLlib's loop for each example.
# ----------------------------------------------------------------------------


def _grl(term) -> WarmStartGRL:
  return WarmStartGRL(term.grl_alpha, term.grl_lo, term.grl_hi, term.grl_max_steps,
                      auto_step=True)


class Reference:
  """The modules, optimizer and scheduler of one TLlib example, and its step."""

  def __init__(self, config: ml_collections.ConfigDict, masks: dict | None = None, *,
               num_classes: int, image: tuple[int, int, int], frozen: str = "",
               backbone_lr: float = 1.0, afn_optimizer: bool = False, source_only: bool = False,
               dtype=torch.float64):
    """`config`: a tljax config (small_cnn model) whose method is ERM or a sum
    of the terms below. `masks`: filled with each step's dropout masks by
    `run` (None: ordinary dropout). `frozen`: regex over tljax parameter paths
    with `requires_grad=False`; `backbone_lr`: the backbone group's rate
    multiplier; `afn_optimizer`: TLlib's AFN optimizer; `source_only`: TLlib's
    ERM (the source batch alone, no method networks)."""
    self.config, self.masks = config, masks
    self.frozen, self.backbone_lr, self.afn_optimizer = frozen, backbone_lr, afn_optimizer
    self.source_only = source_only
    method = config.method
    self.world = tnn.ModuleDict({"classifier": Classifier(config.model, masks, num_classes,
                                                          image)})
    networks = {}
    self.terms = {name: method[name] if "+" in method.name else method
                  for name in method.name.split("+")}
    features = config.model.bottleneck_dim
    if "dann" in self.terms:
      networks["dann"] = tnn.ModuleDict(
          {"discriminator": DomainDiscriminator(features, self.terms["dann"].hidden_sizes[0])})
      self.dann_grl = _grl(self.terms["dann"])
    if "cdan" in self.terms:
      networks["cdan"] = tnn.ModuleDict({"discriminator": DomainDiscriminator(
          features * num_classes, self.terms["cdan"].hidden_sizes[0])})
      self.cdan_grl = _grl(self.terms["cdan"])
    if "mdd" in self.terms:
      term = self.terms["mdd"]
      networks["mdd"] = tnn.ModuleDict({"adv_head": TwoLayerHead(
          features, term.head_width, num_classes, term.head_dropout, "adv_head/Dropout_0", masks)})
      # The MDD classifier's own layer: auto_step=False, stepped after the forward pass.
      self.mdd_grl = WarmStartGRL(term.grl_alpha, term.grl_lo, term.grl_hi, term.grl_max_steps)
    if networks:
      self.world["method"] = tnn.ModuleDict(networks)
    self.world.to(dtype)
    self.dtype = dtype
    self.pretrain_steps = method.get("pretrain_steps", 0)

  def load(self, variables: dict) -> None:
    """Copies tljax's variables (params, batch_stats) into the modules."""
    state = self.world.state_dict()
    loaded = {}
    for collection, tree in variables.items():
      for path, value in flax.traverse_util.flatten_dict(tree).items():
        key = torch_key(collection, path)
        assert key in state, f"{key} ({'/'.join(path)}) has no reference tensor"
        loaded[key] = torch.from_numpy(to_torch(np.array(value), path[-1])).to(self.dtype)
    missing = sorted(k for k in state if k not in loaded and not k.endswith("num_batches_tracked"))
    assert not missing, f"reference tensors tljax does not have: {missing}"
    state.update(loaded)
    self.world.load_state_dict(state)

  def variables(self) -> dict[str, np.ndarray]:
    """The modules' tensors in tljax's layout, by '/'-joined tljax path."""
    return tljax_variables(self.world)

  # ------------------------------------------------------------- optimizers

  def _groups(self, backbone_lr: float, extra: bool) -> list[dict]:
    """`classifier.get_parameters()` (+ the method's networks, lr 1), with
    `config.param_groups`' multipliers; frozen parameters get requires_grad=False."""
    classifier = self.world["classifier"]
    groups = [{"params": list(classifier.backbone.parameters()), "lr": backbone_lr},
              {"params": list(classifier.bottleneck.parameters()), "lr": 1.0},
              {"params": list(classifier.head.parameters()), "lr": 1.0}]
    if extra and "method" in self.world:
      groups.append({"params": list(self.world["method"].parameters()), "lr": 1.0})
    frozen = self.frozen
    for name, p in self.world.named_parameters():
      if frozen and matches(frozen, name):
        p.requires_grad_(False)
    return [g for g in groups if g["params"]]

  def optimizer(self, lr: float, *, extra: bool = True):
    config = self.config
    if self.afn_optimizer:
      # TLlib's AFN: SGD(lr, weight_decay) with momentum 0.9 set on the bottleneck
      # and head groups only; no nesterov, no scheduler.
      classifier = self.world["classifier"]
      groups = [{"params": list(classifier.backbone.parameters())},
                {"params": list(classifier.bottleneck.parameters()), "momentum": AFN_MOMENTUM},
                {"params": list(classifier.head.parameters()), "momentum": AFN_MOMENTUM}]
      return torch.optim.SGD(groups, lr, weight_decay=config.optimizer.weight_decay), None
    groups = self._groups(self.backbone_lr, extra)
    optimizer = torch.optim.SGD(groups, lr, momentum=config.optimizer.momentum,
                                weight_decay=config.optimizer.weight_decay, nesterov=True)
    gamma, decay = config.schedule.gamma, config.schedule.power
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda x: lr * (1.0 + gamma * float(x)) ** (-decay))
    return optimizer, scheduler

  # ------------------------------------------------------------- one step

  def train_mode(self) -> None:
    self.world.train()
    if self.frozen:
      # tljax: a module all of whose parameters are frozen normalises with its
      # running statistics and leaves them alone.
      for name, module in self.world.named_modules():
        if isinstance(module, tnn.modules.batchnorm._BatchNorm) and all(
            not p.requires_grad for p in module.parameters()):
          module.eval()

  def source_only_loss(self, x_s, labels_s):
    """TLlib's `erm.py` / `utils.empirical_risk_minimization`."""
    y_s, _ = self.world["classifier"](x_s)
    return F.cross_entropy(y_s, labels_s)

  def adaptation_loss(self, x_s, labels_s, x_t):
    """The loss of the TLlib example(s) whose terms `config.method.name` joins."""
    classifier = self.world["classifier"]
    if self.config.method.forward == "joint":
      y, f = classifier(torch.cat((x_s, x_t), dim=0))
      y_s, y_t = y.chunk(2, dim=0)
      f_s, f_t = f.chunk(2, dim=0)
    else:
      y_s, f_s = classifier(x_s)
      y_t, f_t = classifier(x_t)
    loss = F.cross_entropy(y_s, labels_s)
    for name, term in self.terms.items():
      if name == "dann":
        value = domain_adversarial_loss(self.world["method"]["dann"]["discriminator"],
                                        self.dann_grl, f_s, f_t)
      elif name == "cdan":
        value = conditional_domain_adversarial_loss(
            self.world["method"]["cdan"]["discriminator"], self.cdan_grl, y_s, f_s, y_t, f_t,
            term.entropy)
      elif name == "mdd":
        adv = self.world["method"]["mdd"]["adv_head"](self.mdd_grl(f))
        y_s_adv, y_t_adv = adv.chunk(2, dim=0)
        value = -mdd_discrepancy(y_s, y_s_adv, y_t, y_t_adv, term.margin)
        self.mdd_grl.step()  # TLlib's `classifier.step()`
      elif name == "dan":
        kernels = [lambda x, a=a: gaussian_kernel(x, alpha=a) for a in term.alphas]
        value = joint_mmd((f_s,), (f_t,), (kernels,), term.linear)
      elif name == "jan":
        kernels = ([lambda x, a=a: gaussian_kernel(x, alpha=a) for a in term.alphas],
                   [lambda x: gaussian_kernel(x, sigma=term.softmax_sigma)])
        value = joint_mmd((f_s, F.softmax(y_s, dim=1)), (f_t, F.softmax(y_t, dim=1)), kernels,
                          term.linear)
      elif name == "mcc":
        value = minimum_class_confusion(y_t, term.temperature)
      elif name == "afn":
        value = adaptive_feature_norm(f_s, term.delta) + adaptive_feature_norm(f_t, term.delta)
      elif name == "bsp":
        value = batch_spectral_penalization(f_s, f_t)
      else:
        raise NotImplementedError(name)
      loss = loss + value * term.trade_off
    return loss

  def run(self, batches, masks_per_step) -> tuple[list[float], dict[int, dict]]:
    """TLlib's loop over the batches; returns each step's loss and the variables
    after the pre-training phase (BSP) and at the end."""
    config = self.config
    snapshots = {}
    if self.pretrain_steps:
      # BSP: a separate ERM run at the pre-training rate over the classifier alone.
      optimizer, scheduler = self.optimizer(
          config.optimizer.learning_rate * config.method.pretrain_lr_scale, extra=False)
    elif self.source_only:
      optimizer, scheduler = self.optimizer(config.optimizer.learning_rate, extra=False)
    else:
      optimizer, scheduler = self.optimizer(config.optimizer.learning_rate)
    losses = []
    for step, (batch, masks) in enumerate(zip(batches, masks_per_step)):
      if self.pretrain_steps and step == self.pretrain_steps:
        snapshots[step] = self.variables()
        # The adaptation run: a new optimizer and scheduler over the classifier
        # and discriminator; the loss modules (and their reversal layers) were
        # built before pre-training and are untouched by it.
        optimizer, scheduler = self.optimizer(config.optimizer.learning_rate)
      if self.masks is not None:
        self.masks.clear()
        self.masks.update({k: list(v) for k, v in masks.items()})
      x_s, labels_s, x_t = torch_batch(batch, self.dtype)
      self.train_mode()
      optimizer.zero_grad()
      if self.source_only or step < self.pretrain_steps:
        loss = self.source_only_loss(x_s, labels_s)
      else:
        loss = self.adaptation_loss(x_s, labels_s, x_t)
      assert self.masks is None or not any(self.masks.values()), "unused dropout masks"
      loss.backward()
      optimizer.step()
      if scheduler is not None:
        scheduler.step()
      losses.append(float(loss.detach()))
    snapshots[len(losses)] = self.variables()
    return losses, snapshots



def tllib_train_transform(size: int = 224):
  """TLlib's training transform (`utils.get_train_transform`, resizing 'default'):
  `ResizeImage` to a square of `round(size * 256 / 224)` (256 at 224 px),
  `RandomResizedCrop(size)`, `RandomHorizontalFlip`, `ToTensor`, ImageNet
  normalisation; tljax's `imagenet_train` preprocessing does the same."""
  resize = round(size * 256 / 224)
  return transforms.Compose([
      transforms.Resize((resize, resize)), transforms.RandomResizedCrop(size),
      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
      transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])


def matches(pattern: str, torch_name: str) -> bool:
  return re.fullmatch(pattern, torch_name.replace(".", "/")) is not None


# ----------------------------------------------------------------------------
# Layouts: tljax (flax) <-> PyTorch.
# ----------------------------------------------------------------------------

TORCH_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  return ".".join(path[:-1]) + "." + TORCH_NAMES[(collection, path[-1])]


def tljax_path(key: str) -> tuple[str, tuple[str, ...]]:
  *modules, name = key.split(".")
  if name in ("running_mean", "running_var"):
    return "batch_stats", (*modules, "mean" if name == "running_mean" else "var")
  if name == "weight":
    # A BatchNorm's weight is flax's scale; a 1-D weight only occurs there.
    return "params", (*modules, "weight")
  return "params", (*modules, name)


def tljax_variables(module: tnn.Module) -> dict[str, np.ndarray]:
  """`module`'s tensors in tljax's layout, keyed `<collection>:<'/'-joined
  tljax path>` (BatchNorm's `num_batches_tracked` left out)."""
  out = {}
  for key, value in module.state_dict().items():
    if key.endswith("num_batches_tracked"):
      continue
    collection, path = tljax_path(key)
    out[collection + ":" + "/".join(path)] = from_torch(value.numpy().copy(), path[-1])
  return out


def to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:  # HWIO -> OIHW
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if leaf == "kernel" and value.ndim == 2:  # (in, out) -> (out, in)
    return np.ascontiguousarray(value.T)
  return value


def from_torch(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "weight" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if leaf == "weight" and value.ndim == 2:
    return value.T
  return value



def torch_batch(batch, dtype=torch.float64):
  """A tljax batch (NHWC numpy) as `(source images, source labels, target images)`."""
  to_nchw = lambda x: torch.from_numpy(
      np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(dtype)
  return (to_nchw(batch["source"]["image"]), torch.from_numpy(np.asarray(batch["source"]["label"],
                                                                         np.int64)),
          to_nchw(batch["target"]["image"]))

