"""Views of a domain: its labels mapped to another task, or a stratified part of it.

Both are cheap wrappers over a domain's examples (nothing is copied or rebuilt),
applied by the trainer where the splits are opened (`train.open_data`), so every
reader downstream (training batches, evaluation, feature caches, validators,
transferability scores) sees the same labels and examples:

* `config.data.label_map` ('parity', 'ge5' or None) turns the ten digit classes
  into another task on the same images (`map_labels`), so that "a different
  task" transfer exists on the embedded data; `num_classes` follows the map.
* `config.data.source_fraction` keeps a seeded, class-stratified fraction of the
  labelled training split (`stratified_subset`): the 1% / 10% / 100% label
  budgets of fine-tuning studies.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from tljax.data.registry import Domain


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """A task on the same images: class `c` of the original labels -> `rule(c)`.

  Attributes:
    rule: original class index -> new class index.
    class_names: names of the new classes.
    description: what the task asks, for tables and logs.
  """

  rule: Callable[[int], int]
  class_names: tuple[str, ...]
  description: str

  def table(self, num_classes: int) -> np.ndarray:
    """`(num_classes,)` int32 lookup: `table[labels]` maps numpy and jax arrays alike."""
    return np.asarray([self.rule(c) for c in range(num_classes)], np.int32)


LABEL_MAPS: dict[str, LabelMap] = {
    "parity": LabelMap(lambda c: c % 2, ("even", "odd"), "is the digit odd"),
    "ge5": LabelMap(lambda c: int(c >= 5), ("<5", ">=5"), "is the digit 5 or more"),
}


def get_label_map(name: str) -> LabelMap:
  if name not in LABEL_MAPS:
    raise ValueError(f"unknown label map {name!r}; choose one of {sorted(LABEL_MAPS)} "
                     "(or None for the dataset's own labels)")
  return LABEL_MAPS[name]


def mapped_num_classes(name: str | None, num_classes: int) -> int:
  """Classes after the map `name` (None: `num_classes`)."""
  return num_classes if not name else len(get_label_map(name).class_names)


def map_label_array(name: str | None, labels: Any, num_classes: int) -> Any:
  """`labels` (numpy or jax integers in `[0, num_classes)`) under the map `name`."""
  if not name:
    return labels
  table = get_label_map(name).table(num_classes)
  if isinstance(labels, (np.ndarray, np.integer, int)):
    return table[labels]
  return jnp.asarray(table)[labels]


def _read(source: Sequence[Mapping[str, Any]], indices: np.ndarray) -> list[dict[str, Any]]:
  """Examples `indices` of `source`, with the batch readers sources offer."""
  get_batch = getattr(source, "get_batch", None)
  if get_batch is not None:
    return list(get_batch(indices))
  get_items = getattr(source, "__getitems__", None)
  if get_items is not None:
    return list(get_items([int(i) for i in indices]))
  return [source[int(i)] for i in indices]


class _ViewSource:
  """Examples `indices` of `source` (all when None), labels through `table`
  (None: kept), and a `domain` index added to each example (None: none)."""

  def __init__(self, source, indices: np.ndarray | None, table: np.ndarray | None,
               domain_index: int | None = None):
    self._source, self._indices, self._table = source, indices, table
    self._domain_index = domain_index

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def _mapped(self, example: Mapping[str, Any]) -> dict[str, Any]:
    example = dict(example)
    if self._table is not None:
      example["label"] = self._table[int(example["label"])]
    if self._domain_index is not None:
      example["domain"] = np.int32(self._domain_index)
    return example

  def __getitem__(self, index: int) -> dict[str, Any]:
    inner = index if self._indices is None else int(self._indices[index])
    return self._mapped(self._source[inner])

  def get_batch(self, indices: np.ndarray) -> list[dict[str, Any]]:
    indices = np.asarray(indices)
    inner = indices if self._indices is None else self._indices[indices]
    return [self._mapped(e) for e in _read(self._source, inner)]


class _ConcatSource:
  """Several sources one after the other (each example keeps the `domain`
  index its view adds)."""

  def __init__(self, sources: Sequence[Any]):
    self._sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self._sources])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, indices: np.ndarray) -> np.ndarray:
    return np.searchsorted(self._starts, indices, side="right") - 1

  def __getitem__(self, index: int) -> dict[str, Any]:
    part = int(self._locate(np.asarray([index]))[0])
    return self._sources[part][int(index - self._starts[part])]

  def get_batch(self, indices: np.ndarray) -> list[dict[str, Any]]:
    indices = np.asarray(indices)
    parts = self._locate(indices)
    out: list[dict[str, Any] | None] = [None] * len(indices)
    for part in np.unique(parts):
      where = np.flatnonzero(parts == part)
      examples = _read(self._sources[part], indices[where] - self._starts[part])
      for i, example in zip(where, examples):
        out[i] = example
    return out


def map_labels(domain: Domain, name: str | None) -> Domain:
  """`domain` with its labels under the map `name` (None: `domain` itself)."""
  if not name:
    return domain
  label_map = get_label_map(name)
  return dataclasses.replace(domain, source=_ViewSource(domain.source, None,
                                                        label_map.table(domain.num_classes)),
                             class_names=label_map.class_names)


def domain_labels(domain: Domain) -> np.ndarray:
  """Every label of `domain`, in order: `(n,)` int64 class labels, or `(n, F)`
  float32 factors for a regression domain (read in batches, images included)."""
  labels = [e["label"] for e in _read(domain.source, np.arange(len(domain)))]
  if domain.factor_names:
    return np.asarray(labels, np.float32).reshape(len(labels), len(domain.factor_names))
  return np.asarray(labels, np.int64)


def subset(domain: Domain, indices: np.ndarray | None, table: np.ndarray | None, *,
           class_names: Sequence[str] | None = None, split: str | None = None) -> Domain:
  """`domain` restricted to examples `indices` (None: all), labels mapped
  through `table` (None: kept), with new class names and split name if given."""
  changes = {"source": _ViewSource(domain.source, indices, table)}
  if class_names is not None:
    changes["class_names"] = tuple(class_names)
  if split is not None:
    changes["split"] = split
  return dataclasses.replace(domain, **changes)


def with_domain_index(domain: Domain, index: int) -> Domain:
  """`domain` whose examples carry `domain: index` (multi-domain batches)."""
  return dataclasses.replace(domain, source=_ViewSource(domain.source, None, None, index))


def concatenate(domains: Sequence[Domain], *, name: str) -> Domain:
  """Domains of one label space as one, each example tagged with its domain's position."""
  sources = [_ViewSource(d.source, None, None, i) for i, d in enumerate(domains)]
  split = "+".join(sorted({d.split for d in domains}))
  return dataclasses.replace(domains[0], name=name, split=split, source=_ConcatSource(sources))


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A seeded, class-stratified subset: `max(1, round(fraction n_c))` examples of
  every class `c` present (its `n_c` examples in a seeded permutation), sorted."""
  if not 0 < fraction <= 1:
    raise ValueError(f"config.data.source_fraction={fraction!r} must be in (0, 1]")
  rng = np.random.default_rng(seed)
  kept = []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    kept.append(members[:max(1, int(round(fraction * len(members))))])
  return np.sort(np.concatenate(kept))


def stratified_subset(domain: Domain, fraction: float, seed: int) -> Domain:
  """`domain` restricted to `stratified_indices` of its labels (itself when fraction is 1)."""
  if fraction == 1:
    return domain
  indices = stratified_indices(domain_labels(domain), fraction, seed)
  return dataclasses.replace(domain, source=_ViewSource(domain.source, indices, None),
                             split=f"{domain.split}@{fraction:g}/seed{seed}")


__all__ = ["LabelMap", "LABEL_MAPS", "get_label_map", "mapped_num_classes", "map_label_array",
           "map_labels", "domain_labels", "subset", "with_domain_index", "concatenate",
           "stratified_indices", "stratified_subset"]
