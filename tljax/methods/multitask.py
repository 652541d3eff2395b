"""Multi-task heads: one trunk (backbone + bottleneck), one head per task.

`config.method.tasks` lists the tasks in order; each has its own labels and
loss weight, and is evaluated by its head's accuracy (`eval_metrics`:
`<task>_accuracy` in metrics.jsonl and results.json's `method_metrics`).

* The first task is the classifier's own: the run's labelled data
  (`config.source`, with `config.data.label_map`), read by `classifier/head`;
  its accuracy is also the run's `source_accuracy` / `target_accuracy`.
* A task with `dataset=''` reads the same images, its labels the run's under
  its own `label_map` (e.g. digit class, 'parity', 'ge5': three tasks on one
  batch).
* A task with a `dataset` reads its own labelled data (`split`, evaluated on
  `eval_split`), batched like the source (the same batch size, augmentation and
  data-parallel sharding; `Method.extra_domains`), e.g. digits and digits_m
  classes as two tasks.

The other tasks' heads are `method/<task name>`, of the classifier head's
type, on the classifier's features. `sampling`:

* 'all': every task every step; one classifier pass over the run's batch and
  every task dataset's batch together (BatchNorm normalises them jointly), and
  the loss `sum_k weight_k CE_k`;
* 'uniform': one task per step, drawn uniformly from the step's key (so a
  resumed run draws the same); only its images go through the network and the
  loss is `weight_t CE_t`, in expectation `1/N sum_k weight_k CE_k`.

A task's loss reaches only its head and the shared trunk. With 'uniform'
sampling every head stays in the step's optimizer: the heads of the tasks not
drawn get a zero gradient, so their momentum and weight decay still act (as
PyTorch's SGD with `zero_grad(set_to_none=False)`; PyTorch's default, `None`
gradients, leaves such a head alone until its task is drawn).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data import views
from tljax.methods import base, register
from tljax.models.heads import create_head

SAMPLINGS = ("all", "uniform")
_TASK_FIELDS = ("name", "dataset", "split", "eval_split", "label_map", "num_classes", "weight")


class Task(NamedTuple):
  """One task (see the module docstring); every field is stated by the config."""

  name: str
  dataset: str
  split: str
  eval_split: str
  label_map: str | None
  num_classes: int
  weight: float


def _task(i: int, spec: Mapping[str, Any]) -> Task:
  spec = dict(spec.items())
  missing = sorted(set(_TASK_FIELDS) - set(spec))
  unknown = sorted(set(spec) - set(_TASK_FIELDS))
  if missing or unknown:
    raise ValueError(f"config.method.tasks[{i}]: " + "; ".join(
        p for p in (f"lacks {missing}" if missing else "",
                    f"has unknown fields {unknown}" if unknown else "") if p)
        + f" (a task has {list(_TASK_FIELDS)})")
  return Task(**{k: spec[k] for k in _TASK_FIELDS})


@register("multitask")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiTask(base.Method):
  """Weighted cross-entropies of several heads on one trunk.

  Attributes:
    tasks: one mapping per task with every `Task` field; converted to `Task`s.
    sampling: 'all' or 'uniform' (see the module docstring).
  """

  inputs = ("source",)

  tasks: tuple
  sampling: str

  def __post_init__(self):
    tasks = tuple(_task(i, t) for i, t in enumerate(self.tasks))
    object.__setattr__(self, "tasks", tasks)
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"config.method.sampling must be one of {SAMPLINGS}, got "
                       f"{self.sampling!r}")
    if not tasks:
      raise ValueError("config.method.tasks is empty: name at least the classifier's own task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names) or any(n in ("source", "target") for n in names):
      raise ValueError(f"config.method.tasks need distinct names other than source/target: "
                       f"{names}")
    if tasks[0].dataset or tasks[0].label_map:
      raise ValueError("config.method.tasks[0] is the classifier's own task: dataset '' and "
                       "label_map None (set config.source / config.data.label_map instead)")

  # ------------------------------------------------------------- construction

  def networks(self, num_classes, classifier):
    for task in self.tasks:
      if not task.dataset:
        expected = views.mapped_num_classes(task.label_map, num_classes)
        if task.num_classes != expected:
          raise ValueError(f"task {task.name!r} (label map {task.label_map}) has {expected} "
                           f"classes, but its config says num_classes={task.num_classes}")
    head_type = classifier.head_type or ("two_layer" if classifier.head_hidden else "linear")
    return {task.name: create_head(head_type, task.num_classes, hidden=classifier.head_hidden,
                                   dropout=classifier.head_dropout, dtype=classifier.dtype,
                                   init=classifier.init_scheme)
            for task in self.tasks[1:]}

  def init_networks(self, ctx, rng, variables, outputs):
    out = {}
    for task, key in zip(self.tasks[1:], jax.random.split(rng, max(len(self.tasks) - 1, 1))):
      params_rng, dropout_rng = jax.random.split(key)
      out[task.name] = dict(ctx.networks[task.name].init(
          {"params": params_rng, "dropout": dropout_rng}, outputs.source_features, train=False))
    return out

  def extra_domains(self):
    return {t.name: base.ExtraDomain(t.dataset, t.split, t.eval_split, t.label_map,
                                     t.num_classes)
            for t in self.tasks if t.dataset}

  # ------------------------------------------------------------- losses

  def _labels(self, ctx, task: Task, batch: dict) -> jax.Array:
    if task.dataset:
      return batch[task.name]["label"]
    return views.map_label_array(task.label_map, batch["source"]["label"], ctx.num_classes)

  def _head_loss(self, ctx, task: Task, variables, features, logits, labels, rng):
    """Cross-entropy and accuracy of `task`'s head (the classifier's own for task 0)."""
    if task is not self.tasks[0]:
      logits, variables = ctx.apply_network(task.name, variables, features, train=True, rng=rng)
    return base.cross_entropy(logits, labels), base.accuracy(logits, labels), variables

  def task_losses(self, ctx, variables, batch, rng) -> tuple[dict, dict, base.Variables]:
    """Every task's loss and accuracy from one classifier pass over the run's
    batch and every task dataset's batch ('all' sampling)."""
    own = [t for t in self.tasks if t.dataset]
    images = [batch["source"]["image"]] + [batch[t.name]["image"] for t in own]
    forward_rng, *head_rngs = jax.random.split(rng, len(self.tasks) + 1)
    (features, logits), variables = ctx.apply_classifier(
        variables, jnp.concatenate(images), train=True, rng=forward_rng)
    bounds = np.cumsum([0] + [x.shape[0] for x in images])
    part = {"": slice(bounds[0], bounds[1])}
    part.update({t.name: slice(bounds[i + 1], bounds[i + 2]) for i, t in enumerate(own)})
    task_loss, task_accuracy = {}, {}
    for task, head_rng in zip(self.tasks, head_rngs):
      rows = part[task.name if task.dataset else ""]
      loss, acc, variables = self._head_loss(ctx, task, variables, features[rows], logits[rows],
                                             self._labels(ctx, task, batch), head_rng)
      task_loss[task.name], task_accuracy[task.name] = loss, acc
    return task_loss, task_accuracy, variables

  def _one_task_loss(self, ctx, index: int, variables, batch, rng):
    """Task `index`'s weighted loss from a pass over its images alone ('uniform')."""
    task = self.tasks[index]
    images = batch[task.name if task.dataset else "source"]["image"]
    forward_rng, head_rng = jax.random.split(rng)
    (features, logits), variables = ctx.apply_classifier(variables, images, train=True,
                                                         rng=forward_rng)
    loss, acc, variables = self._head_loss(ctx, task, variables, features, logits,
                                           self._labels(ctx, task, batch), head_rng)
    one_hot = jnp.arange(len(self.tasks)) == index
    return task.weight * loss, (variables, jnp.where(one_hot, loss, 0.0),
                                jnp.where(one_hot, acc, 0.0))

  def step_variant(self, step, rng):
    """'uniform': the task of step `step`, the draw the step makes from its key
    (`fold_in(rng, step)`, split, first half)."""
    if self.sampling != "uniform":
      return None
    task_rng, _ = jax.random.split(jax.random.fold_in(rng, step))
    return int(_draw_task(task_rng, len(self.tasks)))

  def train_step(self, ctx, state, batch, rng):
    task_rng, step_rng = jax.random.split(rng)

    def loss_fn(variables):
      if self.sampling == "all":
        task_loss, task_accuracy, variables = self.task_losses(ctx, variables, batch, step_rng)
        total = sum(t.weight * task_loss[t.name] for t in self.tasks)
        metrics = {"task": jnp.asarray(-1.0)}
      else:
        if ctx.variant is not None:
          # The trainer drew the task on the host (`step_variant`): one compiled
          # step per task, no `lax.switch` (which XLA:CPU runs ~10x slower).
          index = ctx.variant
          total, (variables, losses_, accuracies) = self._one_task_loss(ctx, index, variables,
                                                                        batch, step_rng)
        else:
          index = _draw_task(task_rng, len(self.tasks))
          branches = [lambda v, i=i: self._one_task_loss(ctx, i, v, batch, step_rng)
                      for i in range(len(self.tasks))]
          total, (variables, losses_, accuracies) = jax.lax.switch(index, branches, variables)
        task_loss = {t.name: losses_[i] for i, t in enumerate(self.tasks)}
        task_accuracy = {t.name: accuracies[i] for i, t in enumerate(self.tasks)}
        metrics = {"task": jnp.asarray(index, jnp.float32)}
      for task in self.tasks:
        metrics[f"{task.name}_loss"] = task_loss[task.name]
        metrics[f"{task.name}_train_accuracy"] = task_accuracy[task.name]
      return total, (variables, {**metrics, "cls_loss": task_loss[self.tasks[0].name]})

    return ctx.update(state, "main", loss_fn)

  # ------------------------------------------------------------- evaluation

  def eval_metrics(self, ctx, state, predict):
    out = {}
    for task in self.tasks:
      pred = predict(task.name if task.dataset else "source")
      labels = pred.labels if task.dataset else views.map_label_array(
          task.label_map, pred.labels, ctx.num_classes)
      if task is self.tasks[0]:
        logits = pred.logits
      else:
        logits = np.asarray(_head_logits(ctx, task.name)(state.variables,
                                                         jnp.asarray(pred.features)))
      out[f"{task.name}_accuracy"] = float(np.mean(np.argmax(logits, -1) == labels))
    return out


@functools.lru_cache(maxsize=64)
def _head_logits(ctx: base.StepContext, name: str):
  """Head `name`'s logits from features, jitted once per run (not per evaluation)."""
  return jax.jit(lambda variables, features: ctx.apply_network(name, variables, features,
                                                               train=False)[0])


@functools.partial(jax.jit, static_argnums=1)
def _draw_task(key: jax.Array, num_tasks: int) -> jax.Array:
  """The task a 'uniform' step trains (the same draw on the host and in a step)."""
  return jax.random.randint(key, (), 0, num_tasks)
