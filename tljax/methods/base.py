"""The method contract: a method owns its training step.

A method (one module in `tljax/methods/`, chosen by `config.method.name`)
decides everything the step does with a batch: which forward passes it runs
(source only, one pass over `[source; target]`, one per domain, two views of
the target, ...), which losses it adds, how many update phases it takes and
with which optimizers, and what extra state it keeps (an EMA teacher,
pseudo-labels, ...). The trainer (`tljax/train.py`) knows none of this; it
builds the pieces a method asks for, jits

    state, metrics = method.train_step(ctx, state, batch, rng)

with `rng = fold_in(state.rng, state.step)`, guards it against non-finite
numbers, and evaluates what `method.eval_variables` returns.

The state is one pytree (`TrainState`), checkpointed and sharded as a whole.
Variables are nested by owner: `params = {'classifier': {...}, 'method':
{<network>: {...}}}`, the same for every collection (`batch_stats`,
`constants`), so `config.param_groups` regexes read like
`classifier/backbone/.*` or `method/dann/discriminator/.*`.

Updates go through `StepContext.update`: it differentiates only the
parameters the named optimizer(s) train (frozen groups and everything outside
the optimizer's scope are closed over, so they leave the backward pass, the
gradient norm, clipping and the non-finite guard), applies the optimizer, and
returns the new state and the phase's metrics.

A backbone with an auxiliary classifier (Inception-v3's) sows its logits as
`intermediates/.../aux_logits` in training; with `config.model.aux_loss_weight
> 0` the labelled loss of every method that goes through the shared forward
passes (`forward_domains`, `terms.source_only_loss`, `terms.labelled_loss`)
adds `aux_loss_weight * CE(aux_logits, labels)` (`StepContext.auxiliary_loss`),
and a method that adds none is refused when its step is traced.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Sequence

import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from tljax import losses

Variables = dict[str, Any]  # {collection: tree}
CLASSIFIER = ("classifier",)
# The entry of a loss function's variables where `StepContext.apply_classifier`
# leaves the auxiliary logits of its training passes until `auxiliary_loss`
# takes them (see `StepContext.aux_loss_weight`); `update` removes it, so it
# never reaches the state.
AUX_LOGITS = "aux_logits"


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. A plain pytree: checkpointed as is.

  Attributes:
    step: the number of steps taken.
    params: trainable variables, nested by owner (`classifier`, `method`).
    model_state: the other collections (`batch_stats`, `constants`), nested
      the same way.
    opt_state: `{optimizer name: optax state}`.
    method_state: whatever else the method keeps (EMA teacher variables,
      pseudo-labels, ...); `{}` for most methods.
    rng: the run's base key; step keys are `fold_in(rng, step)`.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  method_state: Any
  rng: jax.Array

  @property
  def variables(self) -> Variables:
    return {"params": self.params, **self.model_state}

  def replace_variables(self, variables: Variables) -> "TrainState":
    variables = dict(variables)
    return self.replace(params=variables.pop("params"), model_state=variables)


class ExtraDomain(NamedTuple):
  """A labelled dataset a method's step reads besides `inputs` (see
  `Method.extra_domains`): its training split is batched like the source
  (labels kept, the same batch size and augmentation) under the method's key,
  and its evaluation split is what `eval_metrics`' `predict(key)` runs over.

  Attributes:
    dataset: `dataset[/config]`, as `config.source`.
    split: the training split (a TFDS split expression).
    eval_split: the evaluation split.
    label_map: `tljax.data.views` label map applied to both (None: the
      dataset's own labels).
    num_classes: the classes the method expects (checked when opened).
  """

  dataset: str
  split: str
  eval_split: str
  label_map: str | None
  num_classes: int


# `refresh_every` of a method that refreshes once, before step 0 (a resumed run
# restores what that refresh computed from its checkpoint).
REFRESH_ONCE = 2**62


class OptimizerSpec(NamedTuple):
  """One optimizer of a method: which parameters it updates (a regex over
  '/'-joined paths; frozen groups are always excluded), a factor on the
  learning rate of every group, and the step it first updates at (`start`).
  An optimizer's schedule counts its own updates; one that starts part-way
  through a run (after an anneal phase: TLlib's IRM and VREx build a new
  optimizer and cosine schedule there) has its schedule span the
  `config.total_steps - start` updates it will take."""

  scope: str = ".*"
  lr_scale: float = 1.0
  start: int = 0


@flax.struct.dataclass
class DomainOutputs:
  """The classifier's outputs on one step's source and target batches."""

  source_features: jax.Array
  target_features: jax.Array
  source_logits: jax.Array
  target_logits: jax.Array
  source_labels: jax.Array


# ----------------------------------------------------------------------------
# Owner-nested variable trees.
# ----------------------------------------------------------------------------


def owned(variables: Variables, owner: Sequence[str]) -> Variables:
  """The variables of one owner (e.g. `('classifier',)`), per collection."""
  out = {}
  for collection, tree in variables.items():
    for key in owner:
      if not isinstance(tree, Mapping) or key not in tree:
        tree = None
        break
      tree = tree[key]
    if tree is not None:
      out[collection] = tree
  return out


def with_owned(variables: Variables, owner: Sequence[str], updates: Variables) -> Variables:
  """`variables` with `owner`'s collections in `updates` replaced."""
  out = dict(variables)
  for collection, tree in updates.items():
    out[collection] = _set_in(out.get(collection, {}), tuple(owner), tree)
  return out


def _set_in(tree: Mapping, path: tuple[str, ...], value: Any) -> dict:
  tree = dict(tree)
  if len(path) == 1:
    tree[path[0]] = value
  else:
    tree[path[0]] = _set_in(tree.get(path[0], {}), path[1:], value)
  return tree


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(tree) if tree else {}


def select(tree: Any, mask: Mapping[tuple[str, ...], bool]) -> dict:
  """The leaves of `tree` whose path `mask` marks, as a nested dict."""
  return flax.traverse_util.unflatten_dict({p: v for p, v in _flat(tree).items() if mask[p]})


def merge(tree: Any, part: Any) -> dict:
  """`tree` with the leaves of `part` (a subset of its paths) replaced."""
  flat = _flat(tree)
  flat.update(_flat(part))
  return flax.traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------
# The step context: what the trainer builds for a method.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
  """Networks, optimizers and the update rule a method's step uses.

  Built once by the trainer (static under `jax.jit`).

  Attributes:
    classifier: the `Classifier` (backbone -> bottleneck -> head).
    networks: the method's own networks by name (`method/<name>/...`).
    optimizers: `{name: optax transformation}` over that optimizer's
      trainable parameters (see `Method.optimizers`).
    trainable: `{name: {param path tuple: bool}}`, the parameters each
      optimizer updates (in its scope and not frozen by `config.param_groups`).
    schedule: the base learning-rate schedule (for logging).
    optimizer_schedules: each optimizer's schedule of its own updates (the
      base one, or for an optimizer that starts part-way, one over the steps
      left; see `OptimizerSpec.start`); group multipliers not applied.
    num_classes: classes of the task.
    num_target_examples: size of the target training split.
    steps: `(first, end)`: the compiled step only runs for steps (the state's
      step counter) in `[first, end)`, `end=None` unbounded; one compiled step
      per phase of `Method.phase_boundaries`. None: any step.
    variant: the host's static choice for this step (`Method.step_variant`);
      None when the step must decide itself.
    labels: the task's label space (`tljax.data.task.LabelSpace`: classes or
      regression factors, the label-set setting); None outside a task
      (a closed-set classification of `num_classes` classes).
    num_source_domains: labelled domains of the task (`batch['source']['domain']`
      holds each example's position among them).
    regression_loss: 'l2' or 'l1', the supervised loss of regression tasks.
    domain_batch_size: with per-domain sampling (`config.data.source_sampling
      = 'per_domain'`), the examples each labelled domain in a step contributes
      (`config.batch_size`); None when the labelled domains are pooled into
      one stream (their counts in a batch vary).
    domains_per_step: labelled domains in each step's batch (all of them, or
      `config.data.domains_per_step`, drawn anew every step); with per-domain
      sampling a source batch holds `domains_per_step * domain_batch_size`
      examples.
    aux_loss_weight: > 0 trains an auxiliary classifier that the backbone
      sows as `aux_logits` (`config.model.aux_loss_weight`; 0.4 in
      torchvision's Inception-v3 recipe): every training pass of
      `apply_classifier` keeps those logits in the variables under
      `AUX_LOGITS`, and `auxiliary_loss` turns the labelled pass's into
      `aux_loss_weight * CE(aux_logits, labels)`. 0: the auxiliary head,
      if any, gets no loss.
  """

  classifier: nn.Module
  networks: Mapping[str, nn.Module]
  optimizers: Mapping[str, optax.GradientTransformation]
  trainable: Mapping[str, Mapping[tuple[str, ...], bool]]
  schedule: optax.Schedule
  num_classes: int
  num_target_examples: int = 0
  steps: tuple[int, int | None] | None = None
  variant: Any = None
  labels: Any = None
  num_source_domains: int = 1
  regression_loss: str = "l2"
  domain_batch_size: int | None = None
  domains_per_step: int = 1
  optimizer_schedules: Mapping[str, optax.Schedule] = dataclasses.field(default_factory=dict)
  aux_loss_weight: float = 0.0

  @property
  def is_regression(self) -> bool:
    return self.labels is not None and self.labels.kind == "regression"

  def supervised_loss(self, outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """The task's loss on labelled examples: cross-entropy over integer labels,
    or for regression the mean squared (`'l2'`, TLlib's `mse_loss`) or absolute
    (`'l1'`) error over examples and factors."""
    if self.is_regression:
      error = outputs - labels.astype(outputs.dtype)
      return jnp.mean(error**2) if self.regression_loss == "l2" else jnp.mean(jnp.abs(error))
    return cross_entropy(outputs, labels)

  def auxiliary_loss(self, variables: Variables, labels: jax.Array
                     ) -> tuple[jax.Array, Variables]:
    """`aux_loss_weight * CE(aux_logits, labels)` of the latest training pass
    whose auxiliary logits no loss has taken yet, over its first `len(labels)`
    rows (the labelled rows come first in every shared pass: `[source;
    target]`, or the source pass alone), and the variables with that pass
    marked as taken. Zero, and the variables unchanged, when
    `aux_loss_weight` is 0.

    Raises:
      ValueError: at trace time, when no training pass left auxiliary logits.
    """
    if not self.aux_loss_weight:
      return jnp.zeros((), jnp.float32), variables
    pending = variables.get(AUX_LOGITS, ())
    untaken = [i for i, logits in enumerate(pending) if logits is not None]
    if not untaken:
      raise ValueError("config.model.aux_loss_weight > 0, and no training pass of the classifier "
                       "sowed auxiliary logits to train: build a backbone with an auxiliary "
                       "classifier (e.g. --config.model.backbone_kwargs.aux_logits=True) or set "
                       "--config.model.aux_loss_weight=0")
    index = untaken[-1]
    aux_logits = pending[index][:labels.shape[0]]
    # A taken pass stays as None, so `update` can tell that some loss read one.
    taken = pending[:index] + (None,) + pending[index + 1:]
    loss = self.aux_loss_weight * cross_entropy(aux_logits, labels)
    return loss, {**variables, AUX_LOGITS: taken}

  def supervised_metrics(self, outputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """What a step logs of its labelled predictions: accuracy, or the mean absolute error."""
    if self.is_regression:
      return {"source_train_mae": jnp.mean(jnp.abs(outputs - labels.astype(outputs.dtype)))}
    return {"source_train_accuracy": accuracy(outputs, labels)}

  def group_by_domain(self, domain: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each labelled domain's examples in a per-domain batch, as TLlib's DG
    scripts chunk their batches: `(indices, domains)`, where `indices[j]` are
    the `domain_batch_size` batch positions of the j-th domain present (in
    increasing domain order) and `domains[j]` is that domain's position
    among the labelled domains. A stable sort of `domain`, so that each
    domain's examples keep their order in its stream whatever the number of
    devices or processes (a multi-process batch is not ordered by domain).

    Raises:
      ValueError: at trace time, when the domains are pooled (their counts
        vary from batch to batch).
    """
    if self.domain_batch_size is None:
      raise ValueError("this method groups a batch by labelled domain, which needs "
                       "config.data.source_sampling='per_domain'")
    order = jnp.argsort(domain, stable=True)
    # Every present domain holds exactly `domain_batch_size` examples, so the
    # sorted positions split into equal rows.
    indices = order.reshape(self.domains_per_step, self.domain_batch_size)
    return indices, domain[indices[:, 0]]

  def before(self, step: int) -> bool | None:
    """Whether every step this compiled step runs for is below `step` (a
    Python bool, known at trace time), or None when the step counter decides."""
    if self.steps is None:
      return None
    first, end = self.steps
    if end is not None and end <= step:
      return True
    if first >= step:
      return False
    return None

  # ------------------------------------------------------------- forward passes

  def apply_classifier(self, variables: Variables, images: jax.Array, *, train: bool,
                       rng: jax.Array | None = None, owner: Sequence[str] = CLASSIFIER,
                       **inputs: Any) -> tuple[Any, Variables]:
    """`(features, logits)` of the classifier stored under `owner`, and the
    variables with its updated BatchNorm statistics (unchanged when not training).

    `inputs`: the classifier's other keyword inputs (`Classifier.__call__`):
    `domains=` each image's labelled-domain position, for layers that mix
    across domains (MixStyle); `branches=True` for a multi-source head's
    per-domain outputs; `head_gradient_scale` a factor on the gradient the
    head sends into the features (OSBP). None values are left out.
    """
    mine = owned(variables, owner)
    kwargs = {k: v for k, v in inputs.items() if v is not None}
    if not train:
      return self.classifier.apply(mine, images, train=False, **kwargs), variables
    mutable = [c for c in mine if c != "params"]
    if self.aux_loss_weight:
      mutable.append("intermediates")
    if not mutable:
      return self.classifier.apply(mine, images, train=True, rngs={"dropout": rng},
                                   **kwargs), variables
    out, updates = self.classifier.apply(mine, images, train=True, mutable=mutable,
                                         rngs={"dropout": rng}, **kwargs)
    sown = updates.pop("intermediates", {})
    variables = with_owned(variables, owner, updates)
    if self.aux_loss_weight:
      # `sow` keeps a tuple of values under each name.
      aux_logits = tuple(leaf for path, values in _flat(sown).items() if path[-1] == "aux_logits"
                         for leaf in jax.tree.leaves(values))
      variables = {**variables, AUX_LOGITS: variables.get(AUX_LOGITS, ()) + aux_logits}
    return out, variables

  def apply_network(self, name: str, variables: Variables, *args, train: bool,
                    rng: jax.Array | None = None, method: Callable | None = None,
                    **kwargs) -> tuple[Any, Variables]:
    """Calls the method's network `name` (optionally one of its methods)."""
    owner = ("method", name)
    mine = owned(variables, owner)
    mutable = [c for c in mine if c not in ("params", "constants")] if train else []
    mutable = mutable or False  # flax returns (out, {}) for an empty list
    rngs = {"dropout": rng} if rng is not None else {}
    result = self.networks[name].apply(mine, *args, train=train, mutable=mutable, rngs=rngs,
                                       method=method, **kwargs)
    if not mutable:
      return result, variables
    out, updates = result
    return out, with_owned(variables, owner, updates)

  def forward_domains(self, variables: Variables, source_images: jax.Array,
                      target_images: jax.Array, labels: jax.Array, rng: jax.Array, *,
                      joint: bool, owner: Sequence[str] = CLASSIFIER,
                      ) -> tuple[DomainOutputs, Variables]:
    """The classifier on one step's source and target images.

    `joint`: one pass over `[source; target]`, so BatchNorm normalises both
    domains together (TLlib's DANN, CDAN, JAN, MCC, MDD, BSP). Otherwise one
    pass per domain, source first, each normalised by its own batch statistics
    and the running averages updated by both in turn (TLlib's DAN, AFN).
    """
    if joint:
      # The layout does not depend on the number of devices, so neither does
      # position-dependent randomness (dropout).
      images = jnp.concatenate([source_images, target_images])
      (features, logits), variables = self.apply_classifier(variables, images, train=True,
                                                            rng=rng, owner=owner)
      n = source_images.shape[0]
      return DomainOutputs(features[:n], features[n:], logits[:n], logits[n:], labels), variables
    source_rng, target_rng = jax.random.split(rng)
    (source_features, source_logits), variables = self.apply_classifier(
        variables, source_images, train=True, rng=source_rng, owner=owner)
    pending = variables.get(AUX_LOGITS)
    (target_features, target_logits), variables = self.apply_classifier(
        variables, target_images, train=True, rng=target_rng, owner=owner)
    if pending is not None:
      # The target pass's auxiliary logits have no labels: the source pass's
      # stay the latest, for `auxiliary_loss`.
      variables = {**variables, AUX_LOGITS: pending}
    return DomainOutputs(source_features, target_features, source_logits, target_logits,
                         labels), variables

  # ------------------------------------------------------------- updates

  def update(self, state: TrainState, names: str | Sequence[str],
             loss_fn: Callable[[Variables], tuple[jax.Array, tuple[Variables, dict]]],
             ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One gradient step of the optimizer(s) `names` on `loss_fn`.

    Args:
      state: the current state.
      names: an optimizer name, or several updated from the same gradient.
      loss_fn: `variables -> (loss, (variables, metrics))`, given the state's
        variables with the trainable parameters as the differentiated
        argument; returns the variables with updated statistics.

    Returns:
      The state with new parameters, statistics and optimizer states, and the
      metrics of `loss_fn` plus `loss` and `grad_norm` (of this phase's
      trainable parameters only).
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    flat_params = _flat(state.params)
    masks = [self.trainable[n] for n in names]
    union = {p: any(m[p] for m in masks) for p in flat_params}
    trainable = select(state.params, union)
    variables = state.variables

    def objective(trainable_params):
      params = merge(variables["params"], trainable_params)
      loss, (new_variables, metrics) = loss_fn({**variables, "params": params})
      new_variables = dict(new_variables)
      pending = new_variables.pop(AUX_LOGITS, ())
      if pending and all(logits is not None for logits in pending):
        # Auxiliary logits that no loss read: the auxiliary head would
        # silently keep its initialisation.
        raise ValueError("config.model.aux_loss_weight > 0 trains the backbone's auxiliary "
                         "classifier, and this method's loss does not add its term "
                         "(StepContext.auxiliary_loss): set --config.model.aux_loss_weight=0")
      return loss, (new_variables, metrics)

    (loss, (new_variables, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    params = state.params
    opt_state = dict(state.opt_state)
    for name, mask in zip(names, masks):
      part_params = select(params, mask)
      part_grads = select(grads, {p: mask[p] for p in _flat(grads)})
      updates, opt_state[name] = self.optimizers[name].update(part_grads, opt_state[name],
                                                              part_params)
      params = merge(params, optax.apply_updates(part_params, updates))
    new_variables = {**new_variables, "params": params}
    new_state = state.replace_variables(new_variables).replace(opt_state=opt_state)
    return new_state, {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}


# ----------------------------------------------------------------------------
# Methods.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """Base class of every method: ERM's single update over `loss`.

  Subclasses are frozen dataclasses whose fields are `config.method`'s
  (besides `name`); `create_method` refuses fields a method does not declare.
  A simple method overrides `loss`; a method with several phases, extra
  state or networks overrides `train_step`, `networks`, `init_method_state`,
  `optimizers` and `eval_variables` as needed.

  Class attributes:
    inputs: the domains the step reads: `('source',)`, `('source',
      'target')` or `('target',)` (source-free). Only these reach the step.
    target_views: preprocessed views of each target example besides
      `image`, e.g. `('image_strong',)` (`config.data.strong_preprocess`).
    source_views: the same for each labelled example (TLlib's
      semi-supervised methods add a cross-entropy on a strong view of the
      labelled batch); an instance may make it a property of its fields.
    refresh_every: > 0 calls `refresh` before the steps `0, N, 2N, ...`
      (e.g. pseudo-labels recomputed over the whole target split);
      `REFRESH_ONCE`: once, before step 0. A method whose period depends on
      the data overrides `refresh_interval` instead.
    refresh_domain: the training split `refresh`'s `predict` runs over:
      'target' (unlabelled: its labels are not given) or 'source' (the
      labelled training split, e.g. Co-Tuning's category relationship).
  """

  inputs: ClassVar[tuple[str, ...]] = ("source", "target")
  target_views: ClassVar[tuple[str, ...]] = ()
  source_views: ClassVar[tuple[str, ...]] = ()
  refresh_every: ClassVar[int] = 0
  refresh_domain: ClassVar[str] = "target"
  label_kinds: ClassVar[tuple[str, ...]] = ("classification",)
  settings: ClassVar[tuple[str, ...] | None] = None

  def check_task(self, labels: Any, *, has_target: bool, num_source_domains: int,
                 source_sampling: str = "per_domain") -> None:
    """Refuses a task this method cannot train (before anything is written).
    `labels` is the task's `LabelSpace`; `source_sampling` is how several
    labelled domains are batched (`config.data.source_sampling`). Override to
    add a method's own conditions (e.g. several labelled domains)."""
    name = type(self).__name__
    if labels.kind not in self.label_kinds:
      raise ValueError(f"{name} trains {' or '.join(self.label_kinds)} tasks, and this task is "
                       f"{labels.kind} ({labels.describe()}); choose a method for it")
    if self.settings is not None and labels.setting not in self.settings:
      raise ValueError(f"{name} is a method for the {' / '.join(self.settings)} setting, and "
                       f"this task is {labels.setting}; set --config.setting (and the classes "
                       "with data.label_sets or data.source_classes / data.target_classes)")
    if "target" in self.inputs and not has_target:
      raise ValueError(f"{name} reads an unlabelled target domain, and config.target is empty "
                       "(domain generalisation); name the target, or choose a method that reads "
                       "only the labelled domains")
    del num_source_domains, source_sampling

  # ------------------------------------------------------------- construction

  def networks(self, num_classes: int, classifier: nn.Module) -> dict[str, nn.Module]:
    """The method's own networks (`params['method'][name]`); none by default."""
    del num_classes, classifier
    return {}

  def init_networks(self, ctx: StepContext, rng: jax.Array, variables: Variables,
                    outputs: DomainOutputs) -> dict[str, Variables]:
    """Initial variables of `networks`, given example classifier outputs."""
    del rng, variables, outputs
    if ctx.networks:
      raise NotImplementedError(f"{type(self).__name__} has networks but no init_networks")
    return {}

  def init_method_state(self, ctx: StepContext, variables: Variables) -> Any:
    """The method's extra state at step 0 (an EMA teacher, pseudo-labels, ...)."""
    del ctx, variables
    return {}

  def trained_start_reason(self) -> str:
    """Why the method cannot start from a randomly initialised network ('' when
    it can): a run of it without `config.model.init` is refused with this."""
    return ""

  def extra_domains(self) -> dict[str, ExtraDomain]:
    """Labelled datasets the step reads besides `inputs`, by batch key
    (multi-task heads with their own data); none by default."""
    return {}

  def init_from_checkpoint(self, variables: Variables, path: str, *, backbone: str) -> Variables:
    """Called after `config.model.init` (`path`) was merged into the classifier
    and before `init_method_state`: the method's networks may take what they
    need from the same checkpoint (Co-Tuning's source head). Gets and returns
    every owner's variables (`{'params': {'classifier': ..., 'method': ...},
    ...}`); unchanged by default."""
    del path, backbone
    return variables

  def optimizers(self) -> dict[str, OptimizerSpec]:
    """The method's optimizers by name; one over every parameter by default."""
    return {"main": OptimizerSpec()}

  def phase_boundaries(self) -> tuple[int, ...]:
    """Steps at which the step's computation changes (e.g. the end of a
    source pre-training phase). The trainer compiles one step per phase and
    picks it on the host, so a phase switch costs no `lax.cond` inside the
    step (see `terms.phase_cond` and `StepContext.before`). None by default."""
    return ()

  def step_variant(self, step: int, rng: jax.Array) -> Any:
    """A static choice made on the host before step `step` and given to the
    step as `ctx.variant` (e.g. which task a multi-task step trains), so the
    step needs no `lax.switch`; one compilation per distinct value (hashable).
    `rng` is the run's base key (`TrainState.rng`), so the choice can repeat
    the draw the step would make from its own key; the step must still decide
    by itself when `ctx.variant` is None (a context for any step). None by
    default."""
    del step, rng
    return None

  # ------------------------------------------------------------- the step

  def loss(self, ctx: StepContext, variables: Variables, batch: dict, step: jax.Array,
           rng: jax.Array) -> tuple[jax.Array, tuple[Variables, dict]]:
    raise NotImplementedError

  def train_step(self, ctx: StepContext, state: TrainState, batch: dict,
                 rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step on a global batch `{'source': {...}, 'target': {...}}`."""
    return ctx.update(state, "main", lambda v: self.loss(ctx, v, batch, state.step, rng))

  def refresh_interval(self, steps_per_target_epoch: int) -> int:
    """Steps `N` between `refresh` calls (0: never), given how many steps one
    pass over the target training split takes (`ceil(examples / batch_size)`).
    `refresh_every` by default; once per target epoch returns
    `steps_per_target_epoch`."""
    del steps_per_target_epoch
    return self.refresh_every

  def refresh(self, ctx: StepContext, state: TrainState, predict: Callable) -> TrainState:
    """Host-side work between steps (see `refresh_every`). `predict(variables)`
    runs the classifier with `variables` (evaluation mode and preprocessing)
    over every example of the `refresh_domain` training split, in order, and
    returns `(features, logits)`, and for 'source' `(features, logits, labels)`."""
    del ctx, predict
    return state

  # ------------------------------------------------------------- evaluation

  def eval_variables(self, ctx: StepContext, state: TrainState,
                     batch_statistics: Callable) -> Variables:
    """The classifier variables to evaluate. `batch_statistics(variables)`
    recomputes BatchNorm statistics over the target training split (AdaBN)."""
    del ctx, batch_statistics
    return owned(state.variables, CLASSIFIER)

  def predict_labels(self, ctx: StepContext, variables: Variables, features: jax.Array,
                     logits: jax.Array, threshold: float) -> jax.Array:
    """Open-set and universal evaluation: each target example's label, a
    known class or `ctx.labels.unknown_label`. By default TLlib's rule: the
    largest known-class probability (softmax over every output) below
    `threshold` (`config.unknown_threshold`) means unknown. `variables` are
    the state's (every owner), for methods whose rule reads their own networks
    (UAN's discriminator). Jitted by the trainer."""
    del variables, features
    known = ctx.labels.num_known
    probabilities = jax.nn.softmax(logits.astype(jnp.float32))[:, :known]
    labels = jnp.argmax(probabilities, -1)
    return jnp.where(jnp.max(probabilities, -1) < threshold, ctx.labels.unknown_label, labels)

  def eval_metrics(self, ctx: StepContext, state: TrainState,
                   predict: Callable) -> dict[str, float]:
    """Numbers of the method's own added to every evaluation (metrics.jsonl,
    and `method_metrics` in results.json), e.g. each multi-task head's
    accuracy. `predict(name)` returns the classifier's `Predictions` (with
    `eval_variables`) over the evaluation split of 'source', 'target' or an
    `extra_domains` key. None by default."""
    del ctx, state, predict
    return {}


def require_domains(method: str, num_source_domains: int, source_sampling: str, *,
                    minimum: int = 2, grouped: bool = True) -> None:
  """Refuses a task with fewer than `minimum` labelled domains, or (`grouped`)
  whose labelled domains are pooled: a method that compares domains needs
  each step's batch to hold each domain's examples in known numbers."""
  if num_source_domains < minimum:
    raise ValueError(f"{method} compares labelled domains and needs at least {minimum}; "
                     f"config.source names {num_source_domains}: name several, separated by "
                     "commas (e.g. --config.source=synth_digits,digits)")
  if grouped and source_sampling != "per_domain":
    raise ValueError(f"{method} computes a loss per labelled domain and needs "
                     "config.data.source_sampling='per_domain' (each domain's examples in "
                     f"every batch), not {source_sampling!r}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def progressive_weight(step: jax.Array, warmup: int) -> jax.Array:
  """`2 / (1 + exp(-10 p)) - 1`, `p = min(step / warmup, 1)`: the progressive
  schedule of JAN (Long et al. 2017, after Ganin & Lempitsky 2015); 1 when
  `warmup <= 0`."""
  if warmup <= 0:
    return jnp.ones((), float)
  step = jnp.minimum(jnp.asarray(step, float), warmup)
  return losses.warm_start_coeff(step, alpha=10.0, max_steps=warmup)


def trainable_masks(params: Any, specs: Mapping[str, OptimizerSpec],
                    frozen: Mapping[tuple[str, ...], bool]) -> dict[str, dict[tuple[str, ...], bool]]:
  """`{optimizer: {path: bool}}`: in the optimizer's scope and not frozen."""
  flat = _flat(params)
  masks = {}
  for name, spec in specs.items():
    pattern = re.compile(spec.scope)
    masks[name] = {p: bool(pattern.fullmatch("/".join(p))) and not frozen[p] for p in flat}
  return masks
