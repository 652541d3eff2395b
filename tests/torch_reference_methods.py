"""PyTorch restatements of the reference code of tljax's other methods, for
`tests/test_trajectory.py`.

`benchmarks/torch_reference.py` restates TLlib's adversarial and discrepancy
examples (DANN, CDAN, JAN, MDD, ...). This module restates, from each
method's reference code, the methods it does not:

- TLlib (github.com/thuml/Transfer-Learning-Library): ADDA (`adda.py`: the
  source pre-training run, then the target encoder against a
  `DomainDiscriminator` behind a warm-started reversal layer, the source
  classifier frozen with `freeze_bn`), MCD (`mcd.py`: steps A, B and `num_k`
  times C with its two optimizers), FixMatch (`fixmatch.py`), mean teacher
  (`self_ensemble.py`, `EMATeacher`, `L2ConsistencyLoss`,
  `ClassBalanceLoss`), pseudo-labels (`ConfidenceBasedSelfTrainingLoss`),
  Deep CORAL (`CorrelationAlignmentLoss`), entropy minimisation (`entropy`),
  and the task-adaptation examples `delta.py` (L2-SP and DELTA's
  regularisers), `bss.py` and `co_tuning.py` (`Relationship`,
  `CoTuningLoss`) with their optimizer (`get_parameters`, SGD + nesterov,
  `MultiStepLR`);
- DeepDA (github.com/jindongwang/transferlearning, `code/DeepDA`): BNM
  (`loss_funcs/bnm.py`), DSAN's local MMD (`loss_funcs/lmmd.py` with its
  `LambdaSheduler`) and its `TransferNet` loop (one pass per domain, SGD
  without nesterov);
- the authors' code of SHOT (github.com/tim-learn/SHOT,
  `object/image_target.py`: `obtain_label`, the information maximisation and
  pseudo-label losses, its `lr_scheduler`) and of CMD (github.com/wzell/cmd,
  `models/domain_regularizer.py`: `mmatch`);
- AdaBN's statistics as PyTorch's BatchNorm accumulates them in training
  mode with `momentum=None` (a cumulative average) over the target split;
- multi-task heads as one trunk and a linear head per task;
- DELTA's channel attention as tljax documents it (`FineTuningRun.channel_attention`;
  TLlib computes it differently, see `tljax/methods/delta.py`);
- the methods for label sets that differ: TLlib's PADA (`pada.py`,
  `tllib/alignment/pada.py`: `ClassWeightModule`,
  `AutomaticUpdateClassWeightModule`), IWAN (`iwan.py`,
  `tllib/reweight/iwan.py`) and OSBP (`osbp.py`, `tllib/alignment/osbp.py`),
  and the UAN authors' code (github.com/thuml/Universal-Domain-Adaptation,
  `main.py`, `net.py`, `lib.py`).

The networks are tljax's (`benchmarks.torch_reference.Classifier` and its layers),
so that tljax's variables load into them; every module sits where tljax keeps
its variables (`classifier`, `method/<name>`), and method state that tljax
keeps in `TrainState.method_state` (a mean teacher, pseudo-labels, a
starting point, a category relationship, channel attention) is reported
under the same names (`state:<path>`), so that both sides can be compared
tensor by tensor. Each `*Run` class restates one reference loop: its
optimizer(s), the order of its forward passes and of its updates.
"""

from __future__ import annotations

import copy
import re
from typing import Callable, Sequence

import flax.traverse_util
import ml_collections
import numpy as np
from scipy.spatial.distance import cdist
import torch

from benchmarks.torch_reference import (Classifier, DomainDiscriminator, MaskedDropout, Reference,
                                   WarmStartGRL, _ReverseGradient, domain_adversarial_loss,
                                   entropy, from_torch, gaussian_kernel, joint_mmd, tljax_path,
                                   to_torch, torch_key)

tnn = torch.nn
F = torch.nn.functional


# ----------------------------------------------------------------------------
# Losses, each written from its reference.
# ----------------------------------------------------------------------------


def correlation_alignment(f_s, f_t):
  """TLlib's `CorrelationAlignmentLoss`."""
  mean_s, mean_t = f_s.mean(0, keepdim=True), f_t.mean(0, keepdim=True)
  cent_s, cent_t = f_s - mean_s, f_t - mean_t
  cov_s = torch.mm(cent_s.t(), cent_s) / (len(f_s) - 1)
  cov_t = torch.mm(cent_t.t(), cent_t) / (len(f_t) - 1)
  return (mean_s - mean_t).pow(2).mean() + (cov_s - cov_t).pow(2).mean()


def central_moment_discrepancy(x1, x2, n_moments):
  """The CMD authors' `mmatch` (`models/domain_regularizer.py`): the Euclidean
  distance of the means plus that of each central moment up to `n_moments`."""
  matchnorm = lambda a, b: ((a - b) ** 2).sum().sqrt()
  mx1, mx2 = x1.mean(0), x2.mean(0)
  sx1, sx2 = x1 - mx1, x2 - mx2
  scms = matchnorm(mx1, mx2)
  for i in range(n_moments - 1):
    scms = scms + matchnorm((sx1 ** (i + 2)).mean(0), (sx2 ** (i + 2)).mean(0))
  return scms


def confidence_self_training(y, y_target, threshold):
  """TLlib's `ConfidenceBasedSelfTrainingLoss`: `(loss, mask, pseudo_labels)`."""
  confidence, pseudo_labels = F.softmax(y_target.detach(), dim=1).max(dim=1)
  mask = (confidence > threshold).to(y.dtype)
  return (F.cross_entropy(y, pseudo_labels, reduction="none") * mask).mean(), mask, pseudo_labels


def deepda_bnm(target_probabilities):
  """DeepDA's `BNM(src, tar)`: minus the mean singular value of the softmax batch."""
  return -torch.mean(torch.linalg.svdvals(target_probabilities))


class DeepDALocalMMD:
  """DeepDA's `LMMDLoss` (rbf kernel) with its `LambdaSheduler`:
  `lamb = 2 / (1 + exp(-gamma p)) - 1`, `p = curr_iter / max_iter`, computed
  and then stepped at each call, multiplies the loss. The class weights are
  computed in numpy (no gradient), as `cal_weight` does."""

  def __init__(self, num_class, kernel_mul=2.0, kernel_num=5, gamma=1.0, max_iter=1000):
    self.num_class, self.kernel_mul, self.kernel_num = num_class, kernel_mul, kernel_num
    self.gamma, self.max_iter, self.curr_iter = gamma, max_iter, 0

  def lamb(self):
    return 2.0 / (1.0 + np.exp(-self.gamma * self.curr_iter / self.max_iter)) - 1

  def step(self):
    self.curr_iter = min(self.curr_iter + 1, self.max_iter)

  def gaussian_kernel(self, source, target):
    """`MMDLoss.guassian_kernel` (no fixed sigma)."""
    total = torch.cat([source, target], dim=0)
    n_samples = total.size(0)
    l2_distance = ((total.unsqueeze(0) - total.unsqueeze(1)) ** 2).sum(2)
    bandwidth = torch.sum(l2_distance.data) / (n_samples ** 2 - n_samples)
    bandwidth /= self.kernel_mul ** (self.kernel_num // 2)
    return sum(torch.exp(-l2_distance / (bandwidth * self.kernel_mul ** i))
               for i in range(self.kernel_num))

  def cal_weight(self, source_label, target_logits):
    batch_size = source_label.size(0)
    source_label = source_label.cpu().numpy()
    source_onehot = np.eye(self.num_class)[source_label]
    source_sum = np.sum(source_onehot, axis=0).reshape(1, self.num_class)
    source_sum[source_sum == 0] = 100
    source_onehot = source_onehot / source_sum
    target_label = target_logits.detach().max(1)[1].numpy()
    target_logits = target_logits.detach().numpy()
    target_sum = np.sum(target_logits, axis=0).reshape(1, self.num_class)
    target_sum[target_sum == 0] = 100
    target_logits = target_logits / target_sum
    weight_ss, weight_tt, weight_st = (np.zeros((batch_size, batch_size)) for _ in range(3))
    set_s, set_t = set(source_label), set(target_label)
    count = 0
    for i in range(self.num_class):
      if i in set_s and i in set_t:
        s_tvec = source_onehot[:, i].reshape(batch_size, -1)
        t_tvec = target_logits[:, i].reshape(batch_size, -1)
        weight_ss = weight_ss + np.dot(s_tvec, s_tvec.T)
        weight_tt = weight_tt + np.dot(t_tvec, t_tvec.T)
        weight_st = weight_st + np.dot(s_tvec, t_tvec.T)
        count += 1
    if count:
      return weight_ss / count, weight_tt / count, weight_st / count
    return np.array([0.0]), np.array([0.0]), np.array([0.0])

  def __call__(self, source, target, source_label, target_probabilities):
    """`(lamb * loss, loss)`; DeepDA returns the first (float64 weights here:
    DeepDA rounds them to float32)."""
    batch_size = source.size(0)
    weights = [torch.from_numpy(w).to(source.dtype)
               for w in self.cal_weight(source_label, target_probabilities)]
    kernels = self.gaussian_kernel(source, target)
    ss, tt, st = (kernels[:batch_size, :batch_size], kernels[batch_size:, batch_size:],
                  kernels[:batch_size, batch_size:])
    loss = torch.sum(weights[0] * ss + weights[1] * tt - 2 * weights[2] * st)
    lamb = self.lamb()
    self.step()
    return loss * lamb, loss


def classifier_discrepancy(p1, p2):
  """TLlib's MCD `classifier_discrepancy`."""
  return torch.mean(torch.abs(p1 - p2))


def mcd_entropy(predictions):
  """TLlib's MCD `entropy` (of the batch-mean prediction)."""
  return -torch.mean(torch.log(torch.mean(predictions, 0) + 1e-6))


def l2_consistency(y, y_teacher, mask):
  """TLlib's `L2ConsistencyLoss` (mean reduction)."""
  return (((y - y_teacher) ** 2).sum(dim=1) * mask).mean()


def class_balance(p, num_classes):
  """TLlib's `ClassBalanceLoss`."""
  uniform = torch.ones(num_classes, dtype=p.dtype) / num_classes
  return F.binary_cross_entropy(p.mean(dim=0), uniform)


def shot_entropy(probabilities):
  """SHOT's `loss.Entropy` (epsilon 1e-5), per example."""
  return torch.sum(-probabilities * torch.log(probabilities + 1e-5), dim=1)


def batch_spectral_shrinkage(feature, k):
  """TLlib's `BatchSpectralShrinkage`."""
  s = torch.linalg.svdvals(feature.t())
  return sum(torch.pow(s[s.size(0) - 1 - i], 2) for i in range(k))


def co_tuning_loss(y_s, target):
  """TLlib's `CoTuningLoss`."""
  return torch.mean(torch.sum(-target * F.log_softmax(y_s, dim=-1), dim=-1))


def category_relationship(source_probabilities, target_labels):
  """TLlib's `Relationship.get_category_relationship`."""
  classes = int(np.max(target_labels)) + 1
  return np.concatenate([np.mean(source_probabilities[target_labels == i], axis=0, keepdims=True)
                         for i in range(classes)])


def shot_obtain_label(features, outputs, *, threshold=0):
  """SHOT's `obtain_label` (`object/image_target.py`, distance 'cosine') after
  its pass over the target split: `features` and `outputs` of every example
  (the prediction entropy it also computes feeds only a log line)."""
  all_output = F.softmax(outputs, dim=1)
  _, predict = torch.max(all_output, 1)
  all_fea = torch.cat((features, torch.ones(features.size(0), 1, dtype=features.dtype)), 1)
  all_fea = (all_fea.t() / torch.norm(all_fea, p=2, dim=1)).t()
  all_fea = all_fea.numpy()
  num_classes = all_output.size(1)
  aff = all_output.numpy()
  predict = predict.numpy()
  for _ in range(2):
    initc = aff.transpose().dot(all_fea)
    initc = initc / (1e-8 + aff.sum(axis=0)[:, None])
    cls_count = np.eye(num_classes)[predict].sum(axis=0)
    labelset = np.where(cls_count > threshold)[0]
    dd = cdist(all_fea, initc[labelset], "cosine")
    predict = labelset[dd.argmin(axis=1)]
    aff = np.eye(num_classes)[predict]
  return predict.astype("int")


def adabn_statistics(classifier: tnn.Module, batches: Sequence[torch.Tensor]) -> dict:
  """AdaBN with PyTorch's own BatchNorm: a copy of `classifier` whose
  BatchNorm layers have `momentum=None` (a cumulative average of the batch
  statistics, the unbiased variance for the running one) and fresh running
  statistics, run in training mode over `batches`; its statistics, by
  BatchNorm module name."""
  network = copy.deepcopy(classifier)
  for module in network.modules():
    if isinstance(module, tnn.modules.batchnorm._BatchNorm):
      module.momentum = None
      module.reset_running_stats()
  network.train()
  with torch.no_grad():
    for images in batches:
      network(images)
  return {name: (m.running_mean.clone(), m.running_var.clone())
          for name, m in network.named_modules()
          if isinstance(m, tnn.modules.batchnorm._BatchNorm)}


# ----------------------------------------------------------------------------
# Layers `benchmarks.torch_reference` does not have.
# ----------------------------------------------------------------------------


class MCDHead(tnn.Module):
  """TLlib's MCD `ImageClassifierHead` (no pooling: the features are flat):
  `Dropout -> Linear -> BN -> ReLU -> Dropout -> Linear -> BN -> ReLU -> Linear`,
  its layers named as tljax's `MCDHead`'s, its dropout drawing tljax's masks
  (`prefix`: the head's path inside the network tljax applies)."""

  def __init__(self, in_features, hidden, num_classes, dropout, prefix, masks):
    super().__init__()
    self.drop0 = MaskedDropout(dropout, prefix + "Dropout_0", masks)
    self.linear0, self.bn0 = tnn.Linear(in_features, hidden), tnn.BatchNorm1d(hidden)
    self.drop1 = MaskedDropout(dropout, prefix + "Dropout_1", masks)
    self.linear1, self.bn1 = tnn.Linear(hidden, hidden), tnn.BatchNorm1d(hidden)
    self.output = tnn.Linear(hidden, num_classes)

  def forward(self, x):
    x = F.relu(self.bn0(self.linear0(self.drop0(x))))
    x = F.relu(self.bn1(self.linear1(self.drop1(x))))
    return self.output(x)


def features_of(model: ml_collections.ConfigDict, image: tuple[int, int, int]) -> int:
  """Width of the classifier's features (the bottleneck's, or the flat backbone's)."""
  if model.bottleneck_dim:
    return model.bottleneck_dim
  height, width = image[:2]
  for _ in model.backbone_kwargs.widths:  # 2x2 max-pools, 'SAME'
    height, width = -(-height // 2), -(-width // 2)
  return height * width * model.backbone_kwargs.widths[-1]


# ----------------------------------------------------------------------------
# tljax's variable layout.
# ----------------------------------------------------------------------------


def load_variables(world: tnn.Module, variables: dict, dtype) -> None:
  """Copies tljax's variables (`{collection: owner-nested tree}`) into `world`,
  every tensor of which must be covered."""
  state = world.state_dict()
  loaded = {}
  for collection, tree in variables.items():
    for path, value in flax.traverse_util.flatten_dict(tree).items():
      key = torch_key(collection, path)
      assert key in state, f"{key} ({'/'.join(path)}) has no reference tensor"
      loaded[key] = torch.from_numpy(to_torch(np.array(value), path[-1])).to(dtype)
  missing = sorted(k for k in state if k not in loaded and not k.endswith("num_batches_tracked"))
  assert not missing, f"reference tensors tljax does not have: {missing}"
  state.update(loaded)
  world.load_state_dict(state)


def module_variables(module: tnn.Module, prefix: str = "") -> dict[str, np.ndarray]:
  """`module`'s tensors in tljax's layout: `collection:path`, or
  `prefix/collection/path` for a module kept in method state."""
  out = {}
  for key, value in module.state_dict().items():
    if key.endswith("num_batches_tracked"):
      continue
    collection, path = tljax_path(key)
    array = from_torch(value.detach().numpy().copy(), path[-1])
    name = f"{prefix}/{collection}/" if prefix else f"{collection}:"
    out[name + "/".join(path)] = array
  return out


def _inverse_lr(lr: float, gamma: float, decay: float) -> Callable[[int], float]:
  """TLlib's `LambdaLR` factor, `lr * (1 + gamma x)^-decay` (on group rates of 1 or 0.1)."""
  return lambda x: lr * (1.0 + gamma * float(x)) ** (-decay)


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------


class Run:
  """One reference loop. `world` holds its modules named as tljax's variables;
  `step(step, batch)` takes one training step and returns the loss it logs.
  `masks` holds the dropout layers' kept units of the current step (tljax's),
  by module path."""

  def __init__(self, config: ml_collections.ConfigDict, *, num_classes: int,
               image: tuple[int, int, int], dtype=torch.float64):
    self.config, self.num_classes, self.image, self.dtype = config, num_classes, image, dtype
    self.masks: dict[str, list] = {}
    self.world = tnn.ModuleDict({"classifier": Classifier(config.model, self.masks, num_classes,
                                                          image)})

  @property
  def classifier(self) -> tnn.Module:
    return self.world["classifier"]

  def load(self, variables: dict) -> None:
    self.world.to(self.dtype)
    load_variables(self.world, variables, self.dtype)
    self.start()

  def start(self) -> None:
    """Called once the variables are loaded (optimizers, copies)."""

  def variables(self) -> dict[str, np.ndarray]:
    return {**module_variables(self.world), **self.state_variables()}

  def state_variables(self) -> dict[str, np.ndarray]:
    """What tljax keeps in `TrainState.method_state`, as `state:<path>`."""
    return {}

  def step(self, step: int, batch: dict) -> float:
    raise NotImplementedError

  def run(self, batches, masks_per_step, snapshot_steps=()) -> tuple[list[float], dict]:
    losses, snapshots = [], {}
    for step, (batch, masks) in enumerate(zip(batches, masks_per_step)):
      if step in snapshot_steps:
        snapshots[step] = self.variables()
      self.masks.clear()
      self.masks.update({k: list(v) for k, v in masks.items()})
      losses.append(self.step(step, batch))
      assert not any(self.masks.values()), f"unused dropout masks: {list(self.masks)}"
    snapshots[len(losses)] = self.variables()
    return losses, snapshots

  def images(self, array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array).transpose(0, 3, 1, 2))).to(
        self.dtype)

  def labels(self, array) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, np.int64))

  def tllib_sgd(self, groups, lr=None, *, nesterov=True):
    """TLlib's examples' `SGD(groups, lr, momentum, weight_decay, nesterov)` and
    their inverse `LambdaLR` (or none for a constant schedule)."""
    config = self.config
    lr = config.optimizer.learning_rate if lr is None else lr
    optimizer = torch.optim.SGD(groups, lr, momentum=config.optimizer.momentum,
                                weight_decay=config.optimizer.weight_decay, nesterov=nesterov)
    if config.schedule.name == "constant":
      return optimizer, None
    assert config.schedule.name == "inverse", config.schedule.name
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, _inverse_lr(lr, config.schedule.gamma, config.schedule.power))

  def classifier_groups(self, backbone_lr: float = 1.0, *, head: bool = True) -> list[dict]:
    """TLlib's `Classifier.get_parameters()`: backbone (x0.1 when fine-tuning),
    bottleneck, head."""
    classifier = self.classifier
    groups = [{"params": list(classifier.backbone.parameters()), "lr": backbone_lr},
              {"params": list(classifier.bottleneck.parameters()), "lr": 1.0}]
    if head:
      groups.append({"params": list(classifier.head.parameters()), "lr": 1.0})
    return [g for g in groups if g["params"]]


def update(optimizer, scheduler) -> None:
  optimizer.step()
  if scheduler is not None:
    scheduler.step()


class TermsRun(Reference):
  """TLlib's loop (`Reference`) with the terms of this module: Deep CORAL,
  CMD, entropy minimisation, pseudo-labels, BNM, DSAN's local MMD and DDC's
  one-kernel MMD (`source_only_joint_bn`: none). `nesterov=False`: DeepDA's
  optimizer (its `get_parameters` groups are TLlib's: backbone x0.1,
  bottleneck, head). `dsan_gamma`: the ramp of DeepDA's `LambdaSheduler`."""

  def __init__(self, config, masks=None, *, nesterov: bool = True, dsan_gamma: float = 1.0,
               **kwargs):
    super().__init__(config, masks, **kwargs)
    self.nesterov = nesterov
    if "dsan" in self.terms:
      term = self.terms["dsan"]
      self.lmmd = DeepDALocalMMD(kwargs["num_classes"], term.kernel_mul, term.kernel_num,
                                 gamma=dsan_gamma, max_iter=term.trade_off_warmup)

  def optimizer(self, lr, *, extra=True):
    config = self.config
    groups = self._groups(self.backbone_lr, extra)
    optimizer = torch.optim.SGD(groups, lr, momentum=config.optimizer.momentum,
                                weight_decay=config.optimizer.weight_decay,
                                nesterov=self.nesterov)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, _inverse_lr(lr, config.schedule.gamma, config.schedule.power))

  def adaptation_loss(self, x_s, labels_s, x_t):
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
      if name == "source_only_joint_bn":
        continue
      if name == "dsan":
        weighted, value = self.lmmd(f_s, f_t, labels_s, F.softmax(y_t, dim=1))
        # tljax logs the term before the progressive weight (which it applies to
        # the gradient): the detached difference makes the recorded loss that
        # value and leaves DeepDA's gradient as it is.
        loss = loss + term.trade_off * (weighted + (value - weighted).detach())
        continue
      source, target = {"features": (f_s, f_t), "logits": (y_s, y_t),
                        "probs": (F.softmax(y_s, dim=1), F.softmax(y_t, dim=1))}[
                            term.get("layer", "features")]
      if name == "deep_coral":
        assert term.form == "tllib", term.form
        value = correlation_alignment(source, target)
      elif name == "cmd":
        assert term.squash == "sigmoid" and tuple(term.bounds) == (0.0, 1.0)
        # The authors match a sigmoid layer's moments; tljax squashes its ReLU features.
        value = central_moment_discrepancy(torch.sigmoid(source), torch.sigmoid(target),
                                           term.order)
      elif name == "entropy_min":
        value = entropy(F.softmax(y_t, dim=1)).mean()
      elif name == "pseudo_label":
        value, _, _ = confidence_self_training(y_t, y_t, term.threshold)
      elif name == "bnm":
        assert term.normalisation == "singular_values", term.normalisation
        value = deepda_bnm(F.softmax(y_t, dim=1))
      elif name == "ddc":
        kernel = (lambda x: gaussian_kernel(x, alpha=term.alpha)) if term.sigma is None else (
            lambda x: gaussian_kernel(x, sigma=term.sigma))
        value = joint_mmd((source,), (target,), ([kernel],), term.linear)
      else:
        raise NotImplementedError(name)
      loss = loss + value * term.trade_off
    return loss


class ADDARun(Run):
  """TLlib's `adda.py`: `pretrain_steps` of ERM (`empirical_risk_minimization`,
  its own SGD at the pre-training rate and scheduler), then the target
  classifier is a deep copy of the source classifier, whose parameters are
  frozen and whose BatchNorm layers are in evaluation mode (`freeze_bn`), and
  one SGD over the target encoder (`get_parameters(optimize_head=False)`) and
  the discriminator minimises `DomainAdversarialLoss` behind
  `WarmStartGradientReverseLayer(alpha, lo, hi, max_iters, auto_step=True)`.
  The target encoder lives in `method/target` (tljax's placeholder until the
  copy); the target head, a copy that is never trained nor read, is not kept."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    method = config.method
    assert method.objective == "tllib", method.objective
    encoder = copy.deepcopy(self.classifier)
    self.world["method"] = tnn.ModuleDict({
        "target": tnn.ModuleDict({"backbone": encoder.backbone, "bottleneck": encoder.bottleneck}),
        "discriminator": DomainDiscriminator(config.model.bottleneck_dim, method.hidden_sizes[0])})
    assert len(method.hidden_sizes) == 2 and len(set(method.hidden_sizes)) == 1

  def start(self):
    method, config = self.config.method, self.config
    self.pretrain = self.tllib_sgd(self.classifier_groups(),
                                   config.optimizer.learning_rate * method.pretrain_lr_scale)

  def switch(self):
    """After pre-training: copy, freeze, new loss and optimizer."""
    method = self.config.method
    target = self.world["method"]["target"]
    target["backbone"].load_state_dict(self.classifier.backbone.state_dict())
    target["bottleneck"].load_state_dict(self.classifier.bottleneck.state_dict())
    for p in self.classifier.parameters():
      p.requires_grad_(False)
    self.grl = WarmStartGRL(method.grl_alpha, method.grl_lo, method.grl_hi, method.grl_max_steps,
                            auto_step=True)
    discriminator = self.world["method"]["discriminator"]
    groups = [{"params": list(target["backbone"].parameters()), "lr": 1.0},
              {"params": list(target["bottleneck"].parameters()), "lr": 1.0},
              {"params": list(discriminator.parameters()), "lr": 1.0}]
    self.adapt = self.tllib_sgd(groups)

  def step(self, step, batch):
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t = self.images(batch["target"]["image"])
    pretrain_steps = self.config.method.pretrain_steps
    if step < pretrain_steps:
      self.classifier.train()
      y_s, _ = self.classifier(x_s)
      loss = F.cross_entropy(y_s, labels_s)
      optimizer, scheduler = self.pretrain
    else:
      if step == pretrain_steps:
        self.switch()
      self.world.train()
      for module in self.classifier.modules():  # TLlib's freeze_bn
        if isinstance(module, tnn.modules.batchnorm._BatchNorm):
          module.eval()
      _, f_s = self.classifier(x_s)
      target = self.world["method"]["target"]
      f_t = target["bottleneck"](target["backbone"](x_t))
      loss = domain_adversarial_loss(self.world["method"]["discriminator"], self.grl, f_s, f_t)
      optimizer, scheduler = self.adapt
    optimizer.zero_grad()
    loss.backward()
    update(optimizer, scheduler)
    return float(loss.detach())


class MCDRun(Run):
  """TLlib's `mcd.py`: G (backbone), F1 and F2 (`ImageClassifierHead`s);
  `optimizer_g = SGD(G, lr, weight_decay)`, `optimizer_f = SGD([F1, F2], lr,
  momentum 0.9, weight_decay)`, a constant rate; per step A (both optimizers on
  the source losses and the entropy term), B (`optimizer_f`, minus the target
  discrepancy) and `num_k` times C (`optimizer_g` on the discrepancy), each on
  its own forward pass over `[source; target]` in training mode."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    model = config.model
    assert not model.bottleneck_dim and model.head_type == "mcd"
    features = features_of(model, self.image)
    self.classifier.head = MCDHead(features, model.head_hidden, self.num_classes,
                                   model.head_dropout, "head/", self.masks)
    self.world["method"] = tnn.ModuleDict({"f2": MCDHead(
        features, model.head_hidden, self.num_classes, model.head_dropout, "", self.masks)})

  def start(self):
    config = self.config
    decay = config.optimizer.weight_decay
    lr = config.optimizer.learning_rate
    assert config.schedule.name == "constant" and not config.optimizer.nesterov
    self.optimizer_g = torch.optim.SGD(self.classifier.backbone.parameters(), lr=lr,
                                       weight_decay=decay)
    self.optimizer_f = torch.optim.SGD([{"params": self.classifier.head.parameters()},
                                        {"params": self.world["method"]["f2"].parameters()}],
                                       momentum=config.optimizer.momentum, lr=lr,
                                       weight_decay=decay)

  def _heads(self, x):
    g = self.classifier.backbone(x)
    return self.classifier.head(g), self.world["method"]["f2"](g)

  def step(self, step, batch):
    method = self.config.method
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x = torch.cat((x_s, self.images(batch["target"]["image"])), dim=0)
    self.world.train()

    def source_loss():
      y_1, y_2 = self._heads(x)
      y1_s, y1_t = y_1.chunk(2, dim=0)
      y2_s, y2_t = y_2.chunk(2, dim=0)
      y1_t, y2_t = F.softmax(y1_t, dim=1), F.softmax(y2_t, dim=1)
      loss = (F.cross_entropy(y1_s, labels_s) + F.cross_entropy(y2_s, labels_s)
              + (mcd_entropy(y1_t) + mcd_entropy(y2_t)) * method.trade_off_entropy)
      return loss, y1_t, y2_t

    self.optimizer_g.zero_grad()
    self.optimizer_f.zero_grad()
    loss, _, _ = source_loss()
    loss.backward()
    self.optimizer_g.step()
    self.optimizer_f.step()
    logged = float(loss.detach())

    self.optimizer_g.zero_grad()
    self.optimizer_f.zero_grad()
    loss, y1_t, y2_t = source_loss()
    loss = loss - classifier_discrepancy(y1_t, y2_t) * method.trade_off
    loss.backward()
    self.optimizer_f.step()

    for _ in range(method.num_k):
      self.optimizer_g.zero_grad()
      y_1, y_2 = self._heads(x)
      _, y1_t = y_1.chunk(2, dim=0)
      _, y2_t = y_2.chunk(2, dim=0)
      mcd_loss = classifier_discrepancy(F.softmax(y1_t, dim=1),
                                        F.softmax(y2_t, dim=1)) * method.trade_off
      mcd_loss.backward()
      self.optimizer_g.step()
    return logged  # tljax logs step A's loss


class MeanTeacherRun(Run):
  """TLlib's `self_ensemble.py`: the student on the source batch and on the
  training view of the target batch (two passes), the `EMATeacher` (a deep
  copy of the starting student, in training mode, its parameters an EMA of
  the student's after each update, its BatchNorm statistics its own) on the
  teacher's view; cross-entropy plus `L2ConsistencyLoss` where the teacher's
  confidence exceeds the threshold plus `ClassBalanceLoss` times the confident
  fraction; `Adam(get_parameters(), lr)` and the inverse `LambdaLR` (or the
  SGD of tljax's digits recipe)."""

  def start(self):
    self.teacher = copy.deepcopy(self.classifier)
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    config = self.config
    groups = self.classifier_groups(backbone_lr=_backbone_lr(config))
    if config.optimizer.name == "adam":  # TLlib's
      lr = config.optimizer.learning_rate
      self.optimizer = torch.optim.Adam(groups, lr,
                                        betas=(config.optimizer.b1, config.optimizer.b2),
                                        weight_decay=config.optimizer.weight_decay)
      self.scheduler = torch.optim.lr_scheduler.LambdaLR(
          self.optimizer, _inverse_lr(lr, config.schedule.gamma, config.schedule.power))
    else:  # tljax's digits recipe
      self.optimizer, self.scheduler = self.tllib_sgd(groups)

  def state_variables(self):
    return module_variables(self.teacher, "state:teacher")

  def step(self, step, batch):
    method = self.config.method
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t1, x_t2 = self.images(batch["target"]["image"]), self.images(batch["target"]["image_teacher"])
    self.classifier.train()
    self.teacher.train()
    y_s, _ = self.classifier(x_s)
    y_t, _ = self.classifier(x_t1)
    y_t_teacher, _ = self.teacher(x_t2)
    cls_loss = F.cross_entropy(y_s, labels_s)
    p_t, p_t_teacher = F.softmax(y_t, dim=1), F.softmax(y_t_teacher, dim=1)
    confidence, _ = p_t_teacher.max(dim=1)
    mask = (confidence > method.threshold).to(p_t.dtype)
    cons_loss = l2_consistency(p_t, p_t_teacher, mask)
    balance_loss = class_balance(p_t, self.num_classes) * mask.mean()
    loss = cls_loss + method.trade_off * cons_loss + method.trade_off_balance * balance_loss
    self.optimizer.zero_grad()
    loss.backward()
    update(self.optimizer, self.scheduler)
    with torch.no_grad():  # EMATeacher.update
      for teacher_param, param in zip(self.teacher.parameters(), self.classifier.parameters()):
        teacher_param.data = method.ema_decay * teacher_param + (1 - method.ema_decay) * param
    return float(loss.detach())


class FixMatchRun(Run):
  """TLlib's `fixmatch.py`: in training mode, the weak target view without
  gradient, then the source batch (its cross-entropy backpropagated), then the
  strong view (`trade_off` x `ConfidenceBasedSelfTrainingLoss(strong, weak)`
  backpropagated), one SGD step (`get_parameters()`, nesterov, inverse
  `LambdaLR`)."""

  def start(self):
    self.optimizer, self.scheduler = self.tllib_sgd(self.classifier_groups())

  def step(self, step, batch):
    method = self.config.method
    model = self.classifier
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t, x_t_strong = self.images(batch["target"]["image"]), self.images(
        batch["target"]["image_strong"])
    model.train()
    self.optimizer.zero_grad()
    with torch.no_grad():
      y_t, _ = model(x_t)
    y_s, _ = model(x_s)
    cls_loss = F.cross_entropy(y_s, labels_s)
    cls_loss.backward()
    y_t_strong, _ = model(x_t_strong)
    self_training_loss, _, _ = confidence_self_training(y_t_strong, y_t, method.threshold)
    self_training_loss = method.trade_off * self_training_loss
    self_training_loss.backward()
    update(self.optimizer, self.scheduler)
    return float((cls_loss + self_training_loss).detach())


class SHOTRun(Run):
  """SHOT's `train_target` (`object/image_target.py`; the digit script's
  parameter groups, every layer at `lr`): netF = backbone, netB = bottleneck,
  netC = head (frozen); before the first step of each pass over the target
  split (`interval_iter`), `obtain_label` in evaluation mode over the split in
  order; each step `cls_par` x CE(outputs, pseudo-labels[index]) + `ent_par` x
  (mean entropy - entropy of the mean prediction); `SGD` with SHOT's
  `lr_scheduler` (momentum 0.9, nesterov, weight decay, `lr0 (1 + 10 i /
  max_iter)^-0.75`). `schedule_offset`: SHOT's code decays with `i = step + 1`
  (its `iter_num` is incremented first), tljax with `i = step` (offset 0).

  `split`: the target split's images (NHWC) in order; `round_predictions`:
  the features and logits are rounded to float32 before the clustering (the
  authors' `.float()`, and what tljax's evaluation hands over)."""

  def __init__(self, config, *, split: np.ndarray, schedule_offset: int = 1,
               round_predictions: bool = True, **kwargs):
    super().__init__(config, **kwargs)
    self.split, self.schedule_offset = split, schedule_offset
    self.round_predictions = round_predictions
    self.interval = -(-len(split) // config.batch_size)
    self.pseudo_labels = None

  def start(self):
    config = self.config
    for p in self.classifier.head.parameters():
      p.requires_grad_(False)
    groups = self.classifier_groups(head=False)
    self.optimizer = torch.optim.SGD(groups, config.optimizer.learning_rate,
                                     momentum=config.optimizer.momentum,
                                     weight_decay=config.optimizer.weight_decay, nesterov=True)
    self.lr0 = [g["lr"] * config.optimizer.learning_rate for g in self.optimizer.param_groups]

  def obtain_label(self) -> np.ndarray:
    self.classifier.eval()
    with torch.no_grad():
      outputs, features = self.classifier(self.images(self.split))
    if self.round_predictions:
      features, outputs = features.float().to(self.dtype), outputs.float().to(self.dtype)
    method = self.config.method
    assert method.clustering_rounds == 2
    return shot_obtain_label(features, outputs, threshold=method.min_class_count)

  def state_variables(self):
    return {"state:pseudo_labels": np.asarray(self.pseudo_labels)}

  def step(self, step, batch):
    config, method = self.config, self.config.method
    if step % self.interval == 0:
      self.pseudo_labels = self.obtain_label()
    i = step + self.schedule_offset
    decay = (1 + config.schedule.gamma * i) ** (-config.schedule.power)
    for group, lr0 in zip(self.optimizer.param_groups, self.lr0):
      group["lr"] = lr0 * decay
    self.classifier.train()
    x_t = self.images(batch["target"]["image"])
    pred = torch.from_numpy(self.pseudo_labels[np.asarray(batch["target"]["index"])])
    outputs, _ = self.classifier(x_t)
    loss = method.beta * F.cross_entropy(outputs, pred)
    softmax_out = F.softmax(outputs, dim=1)
    entropy_loss = torch.mean(shot_entropy(softmax_out))
    msoftmax = softmax_out.mean(dim=0)
    entropy_loss = entropy_loss - torch.sum(-msoftmax * torch.log(msoftmax + method.epsilon))
    loss = loss + entropy_loss * method.trade_off_im
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    return float(loss.detach())


def _backbone_lr(config: ml_collections.ConfigDict) -> float:
  """The backbone group's multiplier in `config.param_groups` (TLlib's
  `finetune`: 0.1), checked to be the only one besides 1."""
  backbone = 1.0
  for pattern, group in config.param_groups:
    if pattern == ".*":
      assert group == 1.0, config.param_groups
    elif re.fullmatch(pattern, "classifier/backbone/conv1/kernel"):
      backbone = group
  return backbone


class FineTuningRun(Run):
  """TLlib's task-adaptation examples (`delta.py` for L2-SP and DELTA,
  `bss.py`, `co_tuning.py`): `Classifier(backbone, num_classes, finetune)`
  without a bottleneck, SGD over `get_parameters(lr)` (backbone x0.1, the
  source head of Co-Tuning x0.1) with momentum, weight decay and nesterov, and
  `MultiStepLR(milestones, gamma)` (stepped per iteration here: tljax's
  boundaries count steps). One forward pass of the labelled batch per step.

  `attention`: DELTA's channel attention per layer (`None`: uniform is not
  TLlib's; the case feeds the attention tljax computed). `relationship_split`:
  Co-Tuning's labelled split `(images, labels)`, read in order in evaluation
  mode before training (`Relationship`)."""

  def __init__(self, config, *, attention: dict | None = None,
               relationship_split: tuple[np.ndarray, np.ndarray] | None = None, **kwargs):
    super().__init__(config, **kwargs)
    method = config.method
    assert not config.model.bottleneck_dim
    self.name, self.attention, self.relationship_split = method.name, attention, relationship_split
    if self.name == "co_tuning":
      self.world["method"] = tnn.ModuleDict({"source_head": tnn.Linear(
          features_of(config.model, self.image), method.num_source_classes)})

  def start(self):
    config = self.config
    backbone_lr = _backbone_lr(config)
    classifier = self.classifier
    groups = [{"params": list(classifier.backbone.parameters()), "lr": backbone_lr}]
    if self.name == "co_tuning":
      groups.append({"params": list(self.world["method"]["source_head"].parameters()),
                     "lr": backbone_lr})
    groups.append({"params": list(classifier.head.parameters()), "lr": 1.0})
    lr = config.optimizer.learning_rate
    for group in groups:  # get_parameters(base_lr=lr)
      group["lr"] *= lr
    self.optimizer = torch.optim.SGD(groups, momentum=config.optimizer.momentum,
                                     weight_decay=config.optimizer.weight_decay, nesterov=True)
    assert config.schedule.name == "step"
    self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
        self.optimizer, list(config.schedule.boundaries), gamma=config.schedule.decay)
    if self.name in ("l2_sp", "delta"):
      # TLlib's separate source model: the starting weights, frozen, in evaluation mode.
      self.source_classifier = copy.deepcopy(classifier).eval()
      for p in self.source_classifier.parameters():
        p.requires_grad_(False)
      self.source_weight = {name: p.detach().clone()
                            for name, p in self.source_classifier.backbone.named_parameters()}
    if self.name == "co_tuning":
      self.relationship = self.relate()

  def channel_attention(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """DELTA's channel attention as tljax computes it (`DELTA.refresh`, the
    paper's description; not TLlib's `calculate_channel_attention`, which
    trains the whole network first): a softmax regression from zeros on the
    starting network's features of the labelled split (evaluation mode;
    `attention_steps` full-batch steps of SGD, momentum 0.9, nesterov), then,
    per compared layer and output channel, the increase of its cross-entropy
    when the channel's filter is zeroed, standardised over the layer and
    passed through `softmax(z / attention_temperature)`. The features are
    rounded to float32, as tljax's evaluation hands them over, and so are the
    increases, which tljax standardises in float32."""
    method = self.config.method
    starting = copy.deepcopy(self.source_classifier)
    x_all, y = self.images(images), self.labels(labels)

    def features():
      with torch.no_grad():
        _, f = starting(x_all)
      return f.float().to(self.dtype)

    x = features()
    weight = torch.zeros(x.shape[1], self.num_classes, dtype=self.dtype, requires_grad=True)
    bias = torch.zeros(self.num_classes, dtype=self.dtype, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=method.attention_lr, momentum=0.9,
                                nesterov=True)
    for _ in range(method.attention_steps):
      optimizer.zero_grad()
      F.cross_entropy(x @ weight + bias, y).backward()
      optimizer.step()
    loss_of = lambda f: float(F.cross_entropy(f @ weight + bias, y).detach())
    intact = loss_of(x)
    pattern = re.compile(method.layers)
    attention = {}
    for name, module in sorted(starting.named_modules()):
      if not (name and pattern.fullmatch(name.replace(".", "/"))):
        continue
      increases = []
      for channel in range(module.weight.shape[0]):
        kept = module.weight.data[channel].clone()
        module.weight.data[channel] = 0.0
        increases.append(loss_of(features()) - intact)
        module.weight.data[channel] = kept
      z = np.asarray(increases, np.float32).astype(np.float64)
      z = (z - z.mean()) / (z.std() if z.std() > 0 else 1.0)
      z = np.exp(z / method.attention_temperature - np.max(z / method.attention_temperature))
      attention[name.replace(".", "/")] = z / z.sum()
    return attention

  def relate(self) -> np.ndarray:
    """TLlib's `Relationship`: the source head's softmax over the labelled split."""
    images, labels = self.relationship_split
    self.classifier.eval()
    with torch.no_grad():
      _, features = self.classifier(self.images(images))
      # tljax's evaluation hands over float32 features.
      features = features.float().to(self.dtype)
      probabilities = F.softmax(self.world["method"]["source_head"](features), dim=1)
    return category_relationship(probabilities.numpy(), np.asarray(labels))

  def state_variables(self):
    out = {}
    if self.name == "l2_sp":
      for name, value in self.source_weight.items():
        _, path = tljax_path("backbone." + name)
        out["state:starting_point/classifier/" + "/".join(path)] = from_torch(
            value.numpy().copy(), path[-1])
    if self.name == "delta":
      for key, value in module_variables(self.source_classifier, "state:starting_point").items():
        out[key] = value
      for name, weights in self.attention.items():
        out[f"state:attention/{name}"] = np.asarray(weights)
    if self.name == "co_tuning":
      out["state:relationship"] = self.relationship
    return out

  def feature_maps(self, model, x) -> tuple[dict, tuple]:
    """TLlib's `IntermediateLayerGetter` on the compared layers (`layers`, a
    regex over tljax module paths), in the order tljax sorts them."""
    pattern = re.compile(self.config.method.layers)
    names = sorted(n for n, _ in model.named_modules()
                   if n and pattern.fullmatch(n.replace(".", "/")))
    outputs, handles = {}, []
    for name in names:
      module = model.get_submodule(name)
      handles.append(module.register_forward_hook(
          lambda m, i, o, name=name: outputs.__setitem__(name, o)))
    result = model(x)
    for handle in handles:
      handle.remove()
    return {n: outputs[n] for n in names}, result

  def step(self, step, batch):
    method = self.config.method
    x, label = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    self.world.train()
    if self.name == "l2_sp":
      # TLlib's delta.py also runs the source model here; L2-SP does not read it.
      y, _ = self.classifier(x)
      cls_loss = F.cross_entropy(y, label)
      backbone = sum(0.5 * torch.norm(p - self.source_weight[n]) ** 2
                     for n, p in self.classifier.backbone.named_parameters())
    elif self.name == "delta":
      intermediate_s, _ = self.feature_maps(self.source_classifier, x)
      intermediate_t, (y, _) = self.feature_maps(self.classifier, x)
      cls_loss = F.cross_entropy(y, label)
      if method.regularization == "feature_map":
        backbone = sum(0.5 * torch.norm(t - s.detach()) ** 2 for s, t in
                       zip(intermediate_s.values(), intermediate_t.values()))
      else:
        backbone = 0.0
        for name, fm_src in intermediate_s.items():
          fm_tgt = intermediate_t[name]
          b, c, h, w = fm_src.shape
          distance = torch.norm(fm_tgt.reshape(b, c, h * w) - fm_src.reshape(b, c, h * w).detach(),
                                2, 2)
          attention = torch.from_numpy(np.array(self.attention[name.replace(".", "/")])).to(
              self.dtype)
          backbone = backbone + 0.5 * torch.sum(c * torch.mul(attention, distance ** 2) / (h * w))
    if self.name in ("l2_sp", "delta"):
      head = sum(0.5 * torch.norm(p) ** 2 for p in self.classifier.head.parameters())
      loss = cls_loss + method.trade_off_backbone * backbone + method.trade_off_head * head
    elif self.name == "source_only":  # erm.py
      y, _ = self.classifier(x)
      loss = F.cross_entropy(y, label)
    elif self.name == "bss":
      y, f = self.classifier(x)
      loss = F.cross_entropy(y, label) + method.trade_off * batch_spectral_shrinkage(f, method.k)
    elif self.name == "co_tuning":
      label_s = torch.from_numpy(self.relationship[np.asarray(label)]).to(self.dtype)
      y_t, f = self.classifier(x)
      y_s = self.world["method"]["source_head"](f)
      loss = F.cross_entropy(y_t, label) + method.trade_off * co_tuning_loss(y_s, label_s)
    else:
      raise NotImplementedError(self.name)
    self.optimizer.zero_grad()
    loss.backward()
    update(self.optimizer, self.scheduler)
    return float(loss.detach())


class MultiTaskRun(Run):
  """One trunk (backbone, bottleneck) and one linear head per task: the
  classifier's own head for the first task, `method/<task>` for the others;
  TLlib's SGD over the trunk, heads and the other heads (rate 1). 'all': one
  pass over the source batch and each task dataset's batch, concatenated, and
  `sum_k weight_k CE_k` (a label-map task reads the source rows with its map);
  'uniform': the step's task (`tasks_per_step`, drawn by tljax's key) alone."""

  def __init__(self, config, *, label_maps: dict[str, Callable], tasks_per_step=None, **kwargs):
    super().__init__(config, **kwargs)
    method = config.method
    self.tasks, self.label_maps, self.tasks_per_step = method.tasks, label_maps, tasks_per_step
    features = features_of(config.model, self.image)
    self.world["method"] = tnn.ModuleDict({t["name"]: tnn.Linear(features, t["num_classes"])
                                           for t in self.tasks[1:]})

  def start(self):
    groups = self.classifier_groups() + [{"params": list(self.world["method"].parameters()),
                                          "lr": 1.0}]
    self.optimizer, self.scheduler = self.tllib_sgd(groups)
    # Zero gradients, not None, from the first step on (see `step`).
    for p in self.world.parameters():
      p.grad = torch.zeros_like(p)

  def head(self, index, features, logits):
    return logits if index == 0 else self.world["method"][self.tasks[index]["name"]](features)

  def labels_of(self, index, batch):
    task = self.tasks[index]
    if task["dataset"]:
      return self.labels(batch[task["name"]]["label"])
    mapping = self.label_maps[task["label_map"]] if task["label_map"] else (lambda c: c)
    return self.labels([mapping(int(c)) for c in np.asarray(batch["source"]["label"])])

  def rows(self, index, batch):
    task = self.tasks[index]
    return batch[task["name"]] if task["dataset"] else batch["source"]

  def step(self, step, batch):
    self.world.train()
    if self.config.method.sampling == "all":
      own = [i for i, t in enumerate(self.tasks) if t["dataset"]]
      parts = [self.images(batch["source"]["image"])] + [
          self.images(batch[self.tasks[i]["name"]]["image"]) for i in own]
      logits, features = self.classifier(torch.cat(parts))
      bounds = np.cumsum([0] + [len(p) for p in parts])
      loss = 0.0
      for index, task in enumerate(self.tasks):
        part = own.index(index) + 1 if task["dataset"] else 0
        rows = slice(bounds[part], bounds[part + 1])
        out = self.head(index, features[rows], logits[rows])
        loss = loss + task["weight"] * F.cross_entropy(out, self.labels_of(index, batch))
    else:
      index = self.tasks_per_step[step]
      logits, features = self.classifier(self.images(self.rows(index, batch)["image"]))
      out = self.head(index, features, logits)
      loss = self.tasks[index]["weight"] * F.cross_entropy(out, self.labels_of(index, batch))
    # Zero gradients, not None: the heads of the tasks not drawn are updated too
    # (their momentum and weight decay), as tljax's optimizer updates every parameter.
    self.optimizer.zero_grad(set_to_none=False)
    loss.backward()
    update(self.optimizer, self.scheduler)
    return float(loss.detach())


__all__ = ["Run", "TermsRun", "ADDARun", "MCDRun", "MeanTeacherRun", "FixMatchRun", "SHOTRun",
           "FineTuningRun", "MultiTaskRun", "adabn_statistics", "load_variables",
           "module_variables"]


# ----------------------------------------------------------------------------
# Label sets that differ: PADA, IWAN, OSBP, UAN.
# ----------------------------------------------------------------------------


class Blocks(tnn.Module):
  """The bottlenecks `benchmarks.torch_reference.Bottleneck` does not build:
  `(Linear -> [BatchNorm1d] -> [ReLU] -> [Dropout]) x layers`, named as
  tljax's `Bottleneck` (`linear`, `bn`, then `linear1`, `bn1`, ...). TLlib's
  OSBP bottleneck is two blocks with BatchNorm and Dropout(0.5); the UAN
  authors' is one Linear alone."""

  def __init__(self, in_features, model: ml_collections.ConfigDict, masks):
    super().__init__()
    self.layers, self.relu = model.bottleneck_layers, model.bottleneck_relu
    dim = model.bottleneck_dim
    for block in range(self.layers):
      suffix = str(block) if block else ""
      setattr(self, f"linear{suffix}", tnn.Linear(in_features if block == 0 else dim, dim))
      if model.bottleneck_norm:
        setattr(self, f"bn{suffix}", tnn.BatchNorm1d(dim))
      if model.bottleneck_dropout:
        setattr(self, f"dropout{suffix}", MaskedDropout(model.bottleneck_dropout,
                                                        f"bottleneck/Dropout_{block}", masks))

  def forward(self, x):
    for block in range(self.layers):
      suffix = str(block) if block else ""
      x = getattr(self, f"linear{suffix}")(x)
      if hasattr(self, f"bn{suffix}"):
        x = getattr(self, f"bn{suffix}")(x)
      if self.relu:
        x = F.relu(x)
      if hasattr(self, f"dropout{suffix}"):
        x = getattr(self, f"dropout{suffix}")(x)
    return x


class DropoutDiscriminator(tnn.Module):
  """TLlib's `DomainDiscriminator(batch_norm=False)` (IWAN's) and the UAN
  authors' `AdversarialNetwork`: `(Linear -> ReLU -> Dropout) x 2 -> Linear ->
  Sigmoid`, its dropout drawing tljax's masks (`prefix`: the network's path
  inside the module tljax applies)."""

  def __init__(self, in_feature, hidden_size, dropout, prefix, masks):
    super().__init__()
    self.linear0 = tnn.Linear(in_feature, hidden_size)
    self.drop0 = MaskedDropout(dropout, prefix + "Dropout_0", masks)
    self.linear1 = tnn.Linear(hidden_size, hidden_size)
    self.drop1 = MaskedDropout(dropout, prefix + "Dropout_1", masks)
    self.output = tnn.Linear(hidden_size, 1)

  def forward(self, x):
    x = self.drop0(F.relu(self.linear0(x)))
    x = self.drop1(F.relu(self.linear1(x)))
    return torch.sigmoid(self.output(x))


def binary_cross_entropy(d, label, weight=None):
  """`F.binary_cross_entropy` against a constant label (mean reduction)."""
  return F.binary_cross_entropy(d, torch.full_like(d, float(label)),
                                None if weight is None else weight.view_as(d))


def pada_class_weight(outputs, temperature):
  """TLlib's `ClassWeightModule.forward`."""
  softmax_outputs = F.softmax(outputs / temperature, dim=1)
  class_weight = torch.mean(softmax_outputs, dim=0)
  return (class_weight / torch.max(class_weight)).view(-1)


def uan_source_share_weight(domain_out, before_softmax, domain_temperature=1.0,
                            class_temperature=10.0):
  """The UAN authors' `get_source_share_weight` (lib.py); `-` it is
  `get_target_share_weight`."""
  before_softmax = before_softmax / class_temperature
  after_softmax = tnn.Softmax(-1)(before_softmax)
  domain_logit = torch.log(domain_out / (1.0 - domain_out + 1e-10) + 1e-10)  # reverse_sigmoid
  domain_out = tnn.Sigmoid()(domain_logit / domain_temperature)
  entropy_ = torch.sum(-after_softmax * torch.log(after_softmax + 1e-10), dim=1, keepdim=True)
  entropy_norm = entropy_ / np.log(after_softmax.size(1))
  return (entropy_norm - domain_out).detach()


def uan_normalize_weight(x):
  """The UAN authors' `normalize_weight`."""
  x = (x - x.min()) / (x.max() - x.min())
  return (x / torch.mean(x)).detach()


class _LabelSetRun(Run):
  """A TLlib loop over `get_parameters()` of the classifier and the
  method's networks: SGD (nesterov) and the inverse `LambdaLR`."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    model = config.model
    if model.bottleneck_layers != 1 or not model.bottleneck_relu:
      self.classifier.bottleneck = Blocks(self.classifier.bottleneck.linear.in_features, model,
                                          self.masks)

  def start(self):
    groups = self.classifier_groups()
    if "method" in self.world:
      groups.append({"params": list(self.world["method"].parameters()), "lr": 1.0})
    self.optimizer, self.scheduler = self.tllib_sgd(groups,
                                                    nesterov=self.config.optimizer.nesterov)

  def update(self, loss) -> float:
    self.optimizer.zero_grad()
    loss.backward()
    update(self.optimizer, self.scheduler)
    return float(loss.detach())


class PADARun(_LabelSetRun):
  """TLlib's `pada.py`: one pass over `[source; target]`, the source
  cross-entropy weighted by the class weights, DANN's `DomainAdversarialLoss`
  (discriminator with BatchNorm behind a warm-started reversal, `auto_step`)
  with each source example weighted by its class and each target example by
  their mean (`get_class_weight_for_adversarial_loss`). The class weights
  (`AutomaticUpdateClassWeightModule`: `ClassWeightModule` over the
  classifier's outputs on the target split in evaluation mode) are 1, then
  recomputed every `update_every` steps: here before steps `update_every`,
  `2 update_every`, ... (tljax's refresh; see the case), computed from
  float32 logits, kept and summed in float32, as tljax does. `class_weights`
  (by step): weights to train with in place of the recomputed ones, which
  are kept in `restated`."""

  def __init__(self, config, *, split: np.ndarray,
               class_weights: dict[int, np.ndarray] | None = None, **kwargs):
    super().__init__(config, **kwargs)
    method = config.method
    self.split, self.class_weights = split, class_weights
    self.restated: dict[int, np.ndarray] = {}
    self.world["method"] = tnn.ModuleDict({"discriminator": DomainDiscriminator(
        config.model.bottleneck_dim, method.hidden_sizes[0])})
    assert len(set(method.hidden_sizes)) == 1 and len(method.hidden_sizes) == 2
    self.grl = WarmStartGRL(method.grl_alpha, method.grl_lo, method.grl_hi,
                            method.grl_max_steps, auto_step=True)
    self.class_weight = torch.ones(self.num_classes, dtype=torch.float32)

  def refresh(self, step):
    self.classifier.eval()
    with torch.no_grad():
      outputs, _ = self.classifier(self.images(self.split))
    # tljax's evaluation pass hands over float32 logits.
    self.class_weight = pada_class_weight(outputs.to(torch.float32),
                                          self.config.method.temperature)
    self.restated[step] = self.class_weight.numpy().copy()
    if self.class_weights is not None:
      self.class_weight = torch.from_numpy(np.array(self.class_weights[step], np.float32))

  def state_variables(self):
    return {"state:class_weights": self.class_weight.numpy().astype(np.float64)}

  def step(self, step, batch):
    method = self.config.method
    if step and step % method.update_every == 0:
      self.refresh(step)
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t = self.images(batch["target"]["image"])
    self.world.train()
    y, f = self.classifier(torch.cat((x_s, x_t), dim=0))
    y_s, _ = y.chunk(2, dim=0)
    # F.cross_entropy(y_s, labels_s, weight) and get_class_weight_for_adversarial_loss,
    # with the sum and the mean of the float32 weights taken in float32, as tljax does.
    w_s = self.class_weight[labels_s]
    cls_loss = (w_s * F.cross_entropy(y_s, labels_s, reduction="none")).sum() / w_s.sum()
    w_t = torch.ones_like(w_s) * w_s.mean()
    w_s, w_t = w_s.to(self.dtype), w_t.to(self.dtype)
    d = self.world["method"]["discriminator"](self.grl(f))
    d_s, d_t = d.chunk(2, dim=0)
    transfer_loss = 0.5 * (binary_cross_entropy(d_s, 1, w_s) + binary_cross_entropy(d_t, 0, w_t))
    return self.update(cls_loss + transfer_loss * method.trade_off)


class IWANRun(_LabelSetRun):
  """TLlib's `iwan.py`: one pass over `[source; target]`; D
  (`DomainDiscriminator(batch_norm=False)`, its own `DomainAdversarialLoss`)
  on the detached features; the importance weights `1 - D(f_s)` over their
  mean + 1e-5 (`ImportanceWeightModule`, a second pass of D); D_0 behind a
  warm-started reversal with the source examples so weighted; the target
  entropy; `cls + 1.5 trade_off adv_D + trade_off adv_D_0 + gamma entropy`.
  D's reversal (its loss's own, on detached features) reaches no parameter."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    term = config.method.iwan
    assert config.method.forward == "joint" and not term.trade_off_warmup
    assert len(set(term.hidden_sizes)) == 1 and len(term.hidden_sizes) == 2
    features = config.model.bottleneck_dim
    make = lambda name: DropoutDiscriminator(features, term.hidden_sizes[0], term.dropout,
                                             f"{name}/", self.masks)
    self.world["method"] = tnn.ModuleDict({"iwan": tnn.ModuleDict({
        "weight_discriminator": make("weight_discriminator"),
        "discriminator": make("discriminator")})})
    self.grl_d = WarmStartGRL(term.grl_alpha, term.grl_lo, term.grl_hi, term.grl_max_steps,
                              auto_step=True)
    self.grl_d0 = WarmStartGRL(term.grl_alpha, term.grl_lo, term.grl_hi, term.grl_max_steps,
                               auto_step=True)

  def step(self, step, batch):
    method = self.config.method
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t = self.images(batch["target"]["image"])
    self.world.train()
    y, f = self.classifier(torch.cat((x_s, x_t), dim=0))
    y_s, y_t = y.chunk(2, dim=0)
    f_s, f_t = f.chunk(2, dim=0)
    networks = self.world["method"]["iwan"]
    D, D_0 = networks["weight_discriminator"], networks["discriminator"]
    cls_loss = F.cross_entropy(y_s, labels_s)
    d = D(self.grl_d(torch.cat((f_s.detach(), f_t.detach()))))
    d_s, d_t = d.chunk(2, dim=0)
    adv_loss_D = 0.5 * (binary_cross_entropy(d_s, 1) + binary_cross_entropy(d_t, 0))
    weight = 1. - D(f_s)
    w_s = (weight / (weight.mean() + 1e-5)).detach()
    d0 = D_0(self.grl_d0(torch.cat((f_s, f_t))))
    d0_s, d0_t = d0.chunk(2, dim=0)
    adv_loss_D_0 = 0.5 * (binary_cross_entropy(d0_s, 1, w_s) + binary_cross_entropy(d0_t, 0))
    entropy_loss = entropy(F.softmax(y_t, dim=1)).mean()
    trade_off = method.iwan.trade_off
    loss = (cls_loss + 1.5 * trade_off * adv_loss_D + trade_off * adv_loss_D_0
            + method.entropy_min.trade_off * entropy_loss)
    return self.update(loss)


class OSBPRun(_LabelSetRun):
  """TLlib's `osbp.py`: its `ImageClassifier` (two bottleneck blocks), the
  source pass without reversal, the target pass with `GradientReverseLayer`
  (coefficient 1) between the features and the head; the source
  cross-entropy over the K + 1 outputs plus `trade_off x
  UnknownClassBinaryCrossEntropy(t)` on the target."""

  def step(self, step, batch):
    method = self.config.method
    classifier = self.classifier
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t = self.images(batch["target"]["image"])
    self.world.train()
    y_s, _ = classifier(x_s)
    f_t = classifier.bottleneck(classifier.backbone(x_t))
    y_t = classifier.head(_ReverseGradient.apply(f_t, 1.0))
    unknown = F.softmax(y_t, dim=1)[:, -1].contiguous().view(-1, 1)
    t = method.unknown_boundary
    trans_loss = (-torch.mean(t * torch.log(unknown + 1e-6))
                  - torch.mean((1. - t) * torch.log(1. - unknown + 1e-6)))
    return self.update(F.cross_entropy(y_s, labels_s) + method.trade_off * trans_loss)


class UANRun(_LabelSetRun):
  """The UAN authors' `main.py`: the feature extractor and classifier on the
  source batch, then on the target batch; the adversarial discriminator
  behind `GradientReverseModule(aToBSheduler(i, 0, 1, gamma, max_iter))`,
  whose call count `i` advances at every call (two per step); the separate
  discriminator on detached features; the transferability weights
  (`get_source_share_weight` at class temperature 10, `get_target_share_weight`
  at 1, `normalize_weight`); `nn.CrossEntropyLoss` on the softmax output plus
  the weighted and the separate adversarial losses. Their optimizers (one per
  module, the same rate, momentum, weight decay and inverse decay) act as one
  SGD over all."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    method = config.method
    assert method.cross_entropy_on == "probabilities"
    assert len(set(method.hidden_sizes)) == 1 and len(method.hidden_sizes) == 2
    features = config.model.bottleneck_dim
    make = lambda: DropoutDiscriminator(features, method.hidden_sizes[0], method.dropout, "",
                                        self.masks)
    self.world["method"] = tnn.ModuleDict({"discriminator": make(),
                                           "discriminator_separate": make()})
    self.calls = 0

  def reverse(self, x):
    method = self.config.method
    coeff = float(2.0 / (1.0 + np.exp(-method.grl_alpha * self.calls / method.grl_max_calls))
                  - 1.0)
    self.calls += 1
    return _ReverseGradient.apply(x, coeff)

  def step(self, step, batch):
    method = self.config.method
    classifier = self.classifier
    discriminator = self.world["method"]["discriminator"]
    separate = self.world["method"]["discriminator_separate"]
    x_s, labels_s = self.images(batch["source"]["image"]), self.labels(batch["source"]["label"])
    x_t = self.images(batch["target"]["image"])
    self.world.train()
    fc1_s, fc1_t = classifier.backbone(x_s), classifier.backbone(x_t)
    feature_source, feature_target = classifier.bottleneck(fc1_s), classifier.bottleneck(fc1_t)
    fc2_s, fc2_t = classifier.head(feature_source), classifier.head(feature_target)
    predict_prob_source = F.softmax(fc2_s, dim=-1)
    domain_prob_discriminator_source = discriminator(self.reverse(feature_source))
    domain_prob_discriminator_target = discriminator(self.reverse(feature_target))
    domain_prob_separate_source = separate(feature_source.detach())
    domain_prob_separate_target = separate(feature_target.detach())
    source_share_weight = uan_normalize_weight(uan_source_share_weight(
        domain_prob_separate_source, fc2_s, method.domain_temperature,
        method.source_class_temperature))
    target_share_weight = uan_normalize_weight(-uan_source_share_weight(
        domain_prob_separate_target, fc2_t, method.domain_temperature,
        method.target_class_temperature))
    bce = tnn.BCELoss(reduction="none")
    adv_loss = torch.mean(source_share_weight * bce(
        domain_prob_discriminator_source, torch.ones_like(domain_prob_discriminator_source)))
    adv_loss = adv_loss + torch.mean(target_share_weight * bce(
        domain_prob_discriminator_target, torch.zeros_like(domain_prob_discriminator_target)))
    adv_loss_separate = (binary_cross_entropy(domain_prob_separate_source, 1)
                         + binary_cross_entropy(domain_prob_separate_target, 0))
    ce = tnn.CrossEntropyLoss()(predict_prob_source, labels_s)
    return self.update(ce + method.trade_off * adv_loss + adv_loss_separate)
