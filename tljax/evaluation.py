"""Evaluation passes, unsupervised validators, and checkpoint selection.

Every evaluation of a run (`train._evaluate`) runs the classifier over the
evaluation splits once, keeps each example's features and logits, and from
those computes

  * accuracies on the labelled evaluation splits; the target one is the
    *oracle* (it reads target labels, which a practitioner does not have);
  * the unsupervised validators of `tljax.validators` on held-out labelled
    source data (`config.source_val_split`) and unlabelled target data (the
    target training split): source accuracy, target entropy, SND, BNM, DEV,
    IWCV.

`Selection` keeps every evaluation's record, says which step each validator
(and the oracle) would pick, and tells the checkpoint manager to keep those
steps whatever `keep_checkpoints` says (`KeepSelected`). The records are saved
with every checkpoint (`to_json`, restored by `from_json`), so a resumed run
selects and keeps exactly what an uninterrupted run does; `metrics.jsonl`
(kind `validators`) is only their log, read back (`from_metrics`) only for a
checkpoint written before the records were saved with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from tljax import validators as validators_lib

ORACLE = "oracle"


@dataclasses.dataclass(frozen=True)
class Predictions:
  """One split's outputs, in order: `(n, D)` features, `(n, C)` logits, `(n,)` labels."""

  features: np.ndarray
  logits: np.ndarray
  labels: np.ndarray


def predictions(predict_fn: Callable, variables: Any, batches: Iterator[dict]) -> Predictions:
  """Runs `predict_fn(variables, images) -> (features, logits)` over padded
  evaluation batches and keeps the real (mask 1) examples."""
  features, logits, labels = [], [], []
  for batch in batches:
    f, l = _to_host(predict_fn(variables, batch["image"]))
    keep = _to_host(batch["mask"]) > 0
    features.append(np.asarray(f, np.float32)[keep])
    logits.append(np.asarray(l, np.float32)[keep])
    labels.append(_to_host(batch["label"])[keep])
  return Predictions(np.concatenate(features), np.concatenate(logits), np.concatenate(labels))


def _to_host(tree: Any) -> Any:
  """Global arrays as numpy on every process: in a multi-process run each
  process holds only its block of a batch, so the blocks are gathered."""
  if jax.process_count() > 1:
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, jax.device_get(tree))


def accuracy_report(pred: Predictions, num_classes: int) -> dict[str, Any]:
  """Accuracy, mean per-class accuracy, per-class accuracies and mean loss."""
  logits = pred.logits.astype(np.float64)
  correct = np.argmax(logits, -1) == pred.labels
  log_norm = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  loss = log_norm - logits[np.arange(len(logits)), pred.labels]
  count = np.bincount(pred.labels, minlength=num_classes)
  hits = np.bincount(pred.labels, weights=correct, minlength=num_classes)
  per_class = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
  return {"accuracy": float(correct.mean()), "loss": float(loss.mean()),
          "mean_class_accuracy": float(np.nanmean(per_class)),
          "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
          "num_examples": int(len(correct))}


def open_set_report(predicted: np.ndarray, labels: np.ndarray, num_known: int) -> dict[str, Any]:
  """The open-set and universal measures of predictions in `{0..K-1, K}`
  (`K = num_known` is "unknown") against labels in the same range.

  Per-class accuracy is the recall of each class present in `labels`:
  OS is their mean over the known classes and unknown, OS* over the known
  classes, UNK the unknown class's, and the H-score the harmonic mean of OS*
  and UNK (0 when either is 0), the measure of current open-set and
  universal papers (TLlib's `HOS`; Fu et al. 2020).
  """
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  count = np.bincount(labels, minlength=num_known + 1)
  hits = np.bincount(labels, weights=predicted == labels, minlength=num_known + 1)
  per_class = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
  known = per_class[:num_known]
  os_star = float(np.nanmean(known)) if np.any(count[:num_known]) else float("nan")
  unk = float(per_class[num_known]) if count[num_known] else float("nan")
  present = per_class[count > 0]
  h_score = (0.0 if (os_star == 0 or unk == 0) else 2 * os_star * unk / (os_star + unk))
  return {"accuracy": float(np.mean(predicted == labels)), "os": float(np.mean(present)),
          "os_star": os_star, "unk": unk, "h_score": float(h_score),
          "mean_class_accuracy": float(np.mean(present)),
          "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
          "num_examples": int(len(labels))}


def regression_report(pred: Predictions, factor_names: Sequence[str]) -> dict[str, Any]:
  """Mean absolute error per factor and over factors (TLlib's image
  regression measure), and the root mean squared error."""
  outputs = pred.logits.astype(np.float64)
  targets = np.asarray(pred.labels, np.float64).reshape(outputs.shape)
  error = outputs - targets
  per_factor = np.mean(np.abs(error), axis=0)
  return {"mae": float(np.mean(per_factor)),
          "mae_per_factor": {name: float(v) for name, v in zip(factor_names, per_factor)},
          "rmse": float(np.sqrt(np.mean(error**2))), "num_examples": int(len(outputs))}


def task_report(pred: Predictions, labels: Any, predicted: np.ndarray | None = None
                ) -> dict[str, Any]:
  """The measures a task is judged by on one labelled split (`labels`: its
  `tljax.data.task.LabelSpace`): accuracies (closed-set, partial), the
  open-set measures when the split holds unknown examples (`predicted`: the
  method's labels, unknown included), or regression errors. `primary` is the
  number the task is tabulated by (`labels.primary_metric`)."""
  if labels.kind == "regression":
    report = regression_report(pred, labels.names)
  elif predicted is not None:
    # The loss is over the known-class examples (unknown ones have no output
    # in universal models, and an untrained one in open-set models).
    known = pred.labels < labels.num_known
    loss = (accuracy_report(Predictions(pred.features[known], pred.logits[known],
                                        pred.labels[known]), labels.num_outputs)["loss"]
            if np.any(known) else float("nan"))
    report = {**open_set_report(predicted, pred.labels, labels.num_known), "loss": loss}
  else:
    report = accuracy_report(pred, labels.num_outputs)
  report["primary"] = report[labels.primary_metric] if labels.primary_metric in report else (
      report["accuracy"])
  return report


def _subsample(pred: Predictions, max_examples: int) -> Predictions:
  """At most `max_examples` rows, evenly spaced (deterministic)."""
  n = len(pred.labels)
  if n <= max_examples:
    return pred
  index = np.linspace(0, n - 1, max_examples).round().astype(int)
  return Predictions(pred.features[index], pred.logits[index], pred.labels[index])


def validator_values(source_val: Predictions | None, target: Predictions | None, *,
                     names: Sequence[str], max_examples: int,
                     label_kind: str = "classification") -> dict[str, float]:
  """The validators `names` from held-out source predictions (None: only the
  target-only validators) and unlabelled target predictions (None: only the
  source-based ones, e.g. domain generalisation); validators of another label
  kind than the task's are skipped."""
  inputs = {}
  if target is not None:
    target = _subsample(target, max_examples)
    inputs.update(target_logits=jnp.asarray(target.logits),
                  target_features=jnp.asarray(target.features))
  if source_val is not None:
    source_val = _subsample(source_val, max_examples)
    inputs.update(source_logits=jnp.asarray(source_val.logits),
                  source_labels=jnp.asarray(source_val.labels),
                  source_features=jnp.asarray(source_val.features))
  unknown = sorted(set(names) - set(validators_lib.VALIDATORS))
  if unknown:
    raise ValueError(f"config.validation.validators names unknown validators {unknown}; "
                     f"known: {sorted(n for n in validators_lib.VALIDATORS if n != ORACLE)}")
  usable = [n for n in names if n != ORACLE and all(
      k in inputs for k in validators_lib.VALIDATORS[n].inputs)
            and validators_lib.VALIDATORS[n].label_kind in (label_kind, "any")]
  values = validators_lib.evaluate(inputs, usable)
  return {name: float(value) for name, value in values.items()}


# ----------------------------------------------------------------------------
# Selection over a run's evaluations.
# ----------------------------------------------------------------------------


# Keys of an evaluation's record besides the validators' values.
SOURCE_EVAL = "source_eval_accuracy"  # accuracy on the source evaluation split
NOT_VALIDATORS = (ORACLE, "target_accuracy", SOURCE_EVAL)


class Selection:
  """Every evaluation's record `{validator: value, 'oracle': target accuracy,
  'target_accuracy': ..., 'source_eval_accuracy': ...}` by step. (Records
  written before `source_eval_accuracy` existed hold the evaluation split's
  source accuracy under `source_accuracy`.)"""

  def __init__(self, oracle_higher_is_better: bool = True):
    # The oracle is the task's target metric: an accuracy or H-score (higher
    # is better) or a regression error (lower).
    self.records: dict[int, dict[str, float]] = {}
    self.oracle_higher_is_better = oracle_higher_is_better

  def add(self, step: int, record: Mapping[str, float]) -> None:
    self.records[int(step)] = dict(record)

  def to_json(self) -> dict[str, dict[str, float]]:
    """The records by step (as text: JSON keys), for the checkpoint."""
    return {str(step): dict(record) for step, record in sorted(self.records.items())}

  @classmethod
  def from_json(cls, records: Mapping[str, Mapping[str, float]]) -> "Selection":
    selection = cls()
    for step, record in records.items():
      selection.add(int(step), record)
    return selection

  @classmethod
  def from_metrics(cls, path: str, up_to_step: int) -> "Selection":
    """The records a run wrote to metrics.jsonl up to `up_to_step` (lines that
    do not parse are skipped): for checkpoints that predate `to_json`."""
    selection = cls()
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            entry = json.loads(line)
          except json.JSONDecodeError:
            continue
          if entry.get("kind") == "validators" and entry["step"] <= up_to_step:
            selection.add(entry["step"], {k: v for k, v in entry.items()
                                          if k not in ("step", "kind")})
    return selection

  def _scores(self) -> dict[int, dict[str, float]]:
    names = set(validators_lib.VALIDATORS)
    return {step: {k: v for k, v in record.items() if k in names}
            for step, record in self.records.items()}

  def selected(self) -> dict[str, int]:
    """`validator -> step` it selects (the oracle included)."""
    return validators_lib.select_steps(self._scores(),
                                       directions={ORACLE: self.oracle_higher_is_better})

  def steps_to_keep(self) -> set[int]:
    return set(self.selected().values())

  def report(self) -> dict[str, dict[str, Any]]:
    """Per validator: the step it picks, its score there, and that step's accuracies."""
    out = {}
    for name, step in sorted(self.selected().items()):
      record = self.records[step]
      out[name] = {"step": step, "score": record[name],
                   "target_metric": record.get(ORACLE),
                   "target_accuracy": record.get("target_accuracy"),
                   "source_accuracy": record.get(SOURCE_EVAL, record.get("source_accuracy")),
                   "higher_is_better": validators_lib.VALIDATORS[name].higher_is_better}
    return out

  def rank_correlations(self) -> dict[str, float]:
    """Spearman correlation of each validator with target accuracy over this
    run's evaluations, oriented so that +1 means 'ranks them as the oracle'
    (None with fewer than two evaluations or a constant score)."""
    correlations = validators_lib.rank_correlations(self._scores(), oriented=True)
    sign = 1.0 if self.oracle_higher_is_better else -1.0  # +1: ranks as the oracle does
    return {k: None if np.isnan(v) else sign * float(v) for k, v in correlations.items()}


@dataclasses.dataclass
class KeepSelected(preservation.PreservationPolicy):
  """Keeps the latest `n` checkpoints and every step a validator selects."""

  n: int
  selection: Selection

  def should_preserve(self, checkpoints, *, context):
    latest = preservation.LatestN(self.n).should_preserve(checkpoints, context=context)
    keep = self.selection.steps_to_keep()
    return [bool(l) or info.step in keep for l, info in zip(latest, checkpoints)]
