"""The task contract: which domains a run reads, which classes each has, what the labels are.

One description serves every setting tljax runs, so that each setting is data
plus methods, not a fork of the trainer (`train.open_data` builds it from the
config; methods read its `LabelSpace` through their step context):

| setting | labelled domains (sources) | unlabelled domain (target) | judged on |
|---|---|---|---|
| closed-set UDA | one, classes C | one, classes C | the target, accuracy |
| partial | classes C | classes T, a subset of C | the target's classes, accuracy |
| open-set | classes C | C and classes the source never saw | C + "unknown": OS, OS*, UNK, H-score |
| universal | shared S + source-private | S + target-private | S + "unknown": H-score |
| multi-source | several, classes C | one | the target |
| domain generalisation | several | none | held-out test domains, at the end |
| semi-supervised | N labels per class of one split | the rest of that split | its test split |
| regression | float factors | any of the above shapes | mean absolute error |

The label-set relation (`setting`: closed_set, partial, open_set, universal)
is declared in the config and checked against the class lists of the domains,
so a run whose domains disagree with it stops with a line that says which
setting the data is. Class lists come from the datasets (a folder's class
subfolders, a TFDS ClassLabel), optionally narrowed by a class selection
(`select_classes`: names, indices, ranges) or a named preset (TLlib's partial
and open-set subsets of Office-31, Office-Home and VisDA-2017, and the
embedded digits ones). Target classes are matched to the labelled classes by
*name*; target-private classes all become one "unknown" label, which only
evaluation reads (target labels never reach the train step).

Semi-supervised learning is TLlib's protocol: `config.data.labels_per_class
= N` labels N examples of each class of the labelled split, drawn as TLlib's
`x_u_split` draws them (`split_labelled`, seeded by
`config.data.source_subset_seed`, which the semi-supervised tasks of
`configs/default.py` tie to the run's seed, as TLlib seeds it with `--seed`);
when `config.target` names the same dataset and split, the rest of that split
is the unlabelled domain (its labels never reach the step), and evaluation
reads the target's `eval_target_split` (the test split).

Everything here is a cheap view over a domain's examples (`views.subset`):
nothing is copied or rebuilt.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np

from tljax.data import views
from tljax.data.registry import Domain

SETTINGS = ("closed_set", "partial", "open_set", "universal")
CLASSIFICATION, REGRESSION = "classification", "regression"
UNKNOWN_NAME = "unknown"


# ----------------------------------------------------------------------------
# The label space.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """What the model predicts and how its predictions are judged.

  Attributes:
    kind: 'classification' or 'regression'.
    names: the labelled domains' classes, in the order of the model's outputs
      (classification), or the regression factors.
    setting: the label-set relation of labelled and unlabelled data (one of
      `SETTINGS`; 'closed_set' for regression).
    target_classes: indices (into `names`) of the known classes the target
      holds: all of them except in partial and universal settings.
  """

  kind: str
  names: tuple[str, ...]
  setting: str = "closed_set"
  target_classes: tuple[int, ...] = ()

  @property
  def num_known(self) -> int:
    """Known classes (classification) or factors (regression)."""
    return len(self.names)

  @property
  def has_unknown(self) -> bool:
    """Whether the target holds classes the labelled domains lack (one 'unknown' label)."""
    return self.setting in ("open_set", "universal")

  @property
  def unknown_label(self) -> int:
    """The label target-private examples carry at evaluation (`num_known`)."""
    return self.num_known

  @property
  def num_outputs(self) -> int:
    """Outputs of the model's head. Open-set models have one more, for
    "unknown" (TLlib's open-set protocol: the source never has that label;
    at evaluation the known probabilities are compared with a threshold);
    universal ones do not (UAN's)."""
    return self.num_known + (self.setting == "open_set")

  @property
  def eval_names(self) -> tuple[str, ...]:
    """Names of the labels evaluation reads (`names`, then 'unknown' where the target has it)."""
    return self.names + ((UNKNOWN_NAME,) if self.has_unknown else ())

  @property
  def primary_metric(self) -> str:
    """The number a run of this task is judged and tabulated by."""
    if self.kind == REGRESSION:
      return "mae"
    return "h_score" if self.has_unknown else "accuracy"

  @property
  def higher_is_better(self) -> bool:
    return self.kind != REGRESSION

  def describe(self) -> str:
    if self.kind == REGRESSION:
      return f"regression of {self.num_known} factors ({', '.join(self.names)})"
    shared = len(self.target_classes)
    parts = [f"{self.num_known} classes"]
    if self.setting != "closed_set":
      parts.append(f"{self.setting}: the target holds {shared} of them"
                   + (" and unknown ones" if self.has_unknown else ""))
    return "; ".join(parts)


# ----------------------------------------------------------------------------
# Class selections and presets.
# ----------------------------------------------------------------------------


def select_classes(spec: str | Sequence[str], class_names: Sequence[str], *,
                   field: str) -> tuple[int, ...]:
  """Indices (in the dataset's order) of the classes `spec` names.

  Args:
    spec: '' for every class; otherwise comma-separated items (or a sequence
      of them), each a class name, an index, or an inclusive index range
      'a-b'. A class name wins over the same text read as an index.
    class_names: the dataset's classes.
    field: the config field, for messages.

  Raises:
    ValueError: an item that is neither a class name nor an index in range.
  """
  if not spec:
    return tuple(range(len(class_names)))
  items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
  position = {name: i for i, name in enumerate(class_names)}
  chosen: list[int] = []
  for item in items:
    if not item:
      continue
    if item in position:
      indices = [position[item]]
    elif re.fullmatch(r"\d+", item):
      indices = [int(item)]
    elif re.fullmatch(r"\d+-\d+", item):
      low, high = (int(x) for x in item.split("-"))
      indices = list(range(low, high + 1))
    else:
      shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
      raise ValueError(f"{field}: {item!r} is not a class name, an index or a range a-b of "
                       f"the dataset's {len(class_names)} classes ({shown})")
    bad = [i for i in indices if not 0 <= i < len(class_names)]
    if bad:
      raise ValueError(f"{field}: index {bad[0]} is out of range: the dataset has "
                       f"{len(class_names)} classes (0-{len(class_names) - 1})")
    chosen.extend(i for i in indices if i not in chosen)
  if not chosen:
    raise ValueError(f"{field}={spec!r} selects no class")
  return tuple(sorted(chosen))


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named label-set protocol: the setting and the class selections of
  `config.data.source_classes` / `target_classes` it stands for.

  Selections are functions of the dataset's class names (a sorted prefix, a
  fixed list), so a preset reads the same on any copy of the dataset; `fits`
  says whether a labelled domain's class names are that dataset's, so that a
  preset left on another dataset (an own folder) is an error, not a silent
  selection."""

  setting: str
  source: Any  # class names -> selection (names); None: every class
  target: Any
  description: str
  fits: Any = None  # class names -> bool; None: any dataset

  def check(self, name: str, class_names: Sequence[str], domain: str) -> None:
    """Raises when `class_names` (of labelled domain `domain`) are not the
    dataset this preset `name` is for."""
    if self.fits is not None and not self.fits(tuple(class_names)):
      raise ValueError(f"config.data.label_sets={name!r} ({self.description}) does not fit "
                       f"{domain}, whose {len(class_names)} classes are {_short(class_names)}; "
                       "set --config.data.label_sets='' and declare --config.setting (or select "
                       "classes with data.source_classes / data.target_classes)")


_OFFICE_CALTECH = ("back_pack", "bike", "calculator", "headphones", "keyboard",
                   "laptop_computer", "monitor", "mouse", "mug", "projector")
_VISDA_KNOWN = ("bicycle", "bus", "car", "motorcycle", "train", "truck")


def _first(n: int, sort: bool = False):
  return lambda names: tuple((sorted(names) if sort else list(names))[:n])


def _named(kept: Sequence[str]):
  return lambda names: tuple(kept)


def _dataset_of(count: int, including: Sequence[str] = ()):
  """`fits` of a dataset with `count` classes among which `including`."""
  return lambda names: len(names) == count and set(including) <= set(names)


_OFFICE31 = _dataset_of(31, _OFFICE_CALTECH)
_OFFICE_HOME = _dataset_of(65, ("Alarm_Clock", "Webcam"))
_VISDA = _dataset_of(12, _VISDA_KNOWN)
_DIGIT_CLASSES = _dataset_of(10, tuple(str(d) for d in range(10)))


def _office31_universal(side: str):
  """UAN's Office-31 protocol (the authors' `n_share=10, n_source_private=10`
  over their reorganised lists): the 10 Office-Caltech classes shared, the
  next 10 of the others (alphabetical) source-private, the last 11 target-private."""
  def select(names):
    others = [n for n in names if n not in _OFFICE_CALTECH]
    private = others[:10] if side == "source" else others[10:]
    return tuple(n for n in names if n in _OFFICE_CALTECH or n in private)
  return select


PRESETS: dict[str, Preset] = {
    # TLlib's partial DA (`tllib.vision.datasets.partial.default_partial`).
    "office31_partial": Preset("partial", None, _named(_OFFICE_CALTECH),
                               "Office-31 (31 classes) -> the 10 classes shared with Caltech",
                               _OFFICE31),
    "office_home_partial": Preset("partial", None, _first(25, sort=True),
                                  "Office-Home (65) -> the first 25 in alphabetical order",
                                  _OFFICE_HOME),
    "visda2017_partial": Preset("partial", None, _first(6, sort=True),
                                "VisDA-2017 (12) -> the first 6 in alphabetical order", _VISDA),
    # TLlib's open-set DA (`tllib.vision.datasets.openset.default_open_set`): the
    # known classes in the source, every class in the target.
    "office31_open_set": Preset("open_set", _first(20), None,
                                "Office-31: the first 20 classes known, the other 11 unknown",
                                _OFFICE31),
    "office_home_open_set": Preset("open_set", _first(25, sort=True), None,
                                   "Office-Home: the first 25 (alphabetical) known, 40 unknown",
                                   _OFFICE_HOME),
    "visda2017_open_set": Preset("open_set", _named(_VISDA_KNOWN), None,
                                 "VisDA-2017: 6 known classes, the other 6 unknown", _VISDA),
    # UAN's universal DA (You et al. 2019, github.com/thuml/Universal-Domain-Adaptation).
    "office31_universal": Preset("universal", _office31_universal("source"),
                                 _office31_universal("target"),
                                 "Office-31: 10 shared classes (Office-Caltech), 10 "
                                 "source-private, 11 target-private", _OFFICE31),
    # The embedded digits (ten classes '0'..'9').
    "digits_partial": Preset("partial", None, _first(5),
                             "digits: 10 source classes -> 5 target classes (0-4)", _DIGIT_CLASSES),
    "digits_open_set": Preset("open_set", _first(6), None,
                              "digits: 6 known classes (0-5), 4 unknown target classes (6-9)",
                              _DIGIT_CLASSES),
    "digits_universal": Preset("universal", _first(7), lambda names: tuple(names[3:]),
                               "digits: 4 shared classes (3-6), 3 source-private (0-2), "
                               "3 target-private (7-9)", _DIGIT_CLASSES),
}


def preset(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"unknown config.data.label_sets {name!r}; choose one of "
                     f"{', '.join(sorted(PRESETS))}, or '' and set data.source_classes / "
                     "data.target_classes")
  return PRESETS[name]


# ----------------------------------------------------------------------------
# Building the label space from the domains.
# ----------------------------------------------------------------------------


def infer_setting(source: Sequence[str], target: Sequence[str]) -> str:
  """The label-set relation of two class lists (by name)."""
  source, target = set(source), set(target)
  if source == target:
    return "closed_set"
  if target < source:
    return "partial"
  if source < target:
    return "open_set"
  return "universal"


def label_space(source_names: Sequence[str], target_names: Sequence[str] | None, *,
                setting: str, source: str, target: str) -> LabelSpace:
  """The classification label space of labelled classes `source_names` and a
  target holding `target_names` (None: no unlabelled domain), checked
  against the declared `setting`.

  Raises:
    ValueError: a setting the class lists contradict, naming the one they are.
  """
  if setting not in SETTINGS:
    raise ValueError(f"config.setting={setting!r}: choose one of {', '.join(SETTINGS)}")
  names = tuple(source_names)
  if target_names is None:
    return LabelSpace(CLASSIFICATION, names, setting, tuple(range(len(names))))
  actual = infer_setting(names, target_names)
  if not set(names) & set(target_names):
    raise ValueError(f"source {source!r} and target {target!r} share no class "
                     f"({list(names)[:4]}... vs {list(target_names)[:4]}...): check the "
                     "domains or data.source_classes / data.target_classes")
  if actual != setting:
    private_source = sorted(set(names) - set(target_names))
    private_target = sorted(set(target_names) - set(names))
    detail = "; ".join(p for p in (
        f"classes only in the source: {_short(private_source)}" if private_source else "",
        f"classes only in the target: {_short(private_target)}" if private_target else "") if p)
    raise ValueError(
        f"source {source!r} and target {target!r} have "
        + ("the same classes" if actual == "closed_set" else f"different classes ({detail})")
        + f", which is the {actual} setting, but config.setting={setting!r}; set "
        f"--config.setting={actual}" + (" (or select classes with data.source_classes / "
                                        "data.target_classes)" if actual != "closed_set" else ""))
  shared = tuple(i for i, n in enumerate(names) if n in set(target_names))
  return LabelSpace(CLASSIFICATION, names, setting, shared)


def _short(names: Sequence[str]) -> str:
  return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def target_table(domain_names: Sequence[str], labels: LabelSpace) -> np.ndarray:
  """`(dataset classes,)` table from a target dataset's labels to task labels:
  known names to their index in `labels.names`, the others to
  `labels.unknown_label` (or -1 where the task has no unknown label)."""
  position = {n: i for i, n in enumerate(labels.names)}
  fallback = labels.unknown_label if labels.has_unknown else -1
  return np.asarray([position.get(n, fallback) for n in domain_names], np.int64)


# ----------------------------------------------------------------------------
# Views: class subsets, label-budget subsets, held-out parts.
# ----------------------------------------------------------------------------


def restrict_classes(domain: Domain, keep: Sequence[int], table: np.ndarray | None = None,
                     names: Sequence[str] | None = None) -> Domain:
  """`domain` with only the examples of dataset classes `keep`, relabelled by
  `table` (dataset label -> task label; None keeps the dataset's labels), and
  `names` as its class list (default: the kept classes' names)."""
  labels = views.domain_labels(domain)
  all_kept = len(keep) == domain.num_classes
  indices = None if all_kept else np.flatnonzero(np.isin(labels, np.asarray(keep)))
  if indices is not None and not len(indices):
    raise ValueError(f"{domain.name}:{domain.split} has no example of the selected classes")
  if names is None:
    names = [domain.class_names[i] for i in keep]
  if indices is None and table is None:
    return dataclasses.replace(domain, class_names=tuple(names))
  return views.subset(domain, indices, table, class_names=tuple(names))


def stratified_count_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """A seeded, class-balanced subset: `per_class` examples of every class
  present, sorted.

  TLlib's `x_u_split` draw: one `np.random.RandomState(seed)`, and for each
  class in increasing order `choice(members, per_class, replace=False)`, so a
  seed labels the same examples as TLlib's semi-supervised examples do on the
  same split (the legacy generator is what keeps that equality).

  Raises:
    ValueError: `per_class` <= 0, or a class with fewer than `per_class` examples.
  """
  if per_class <= 0:
    raise ValueError(f"config.data.labels_per_class={per_class} must be > 0")
  rng = np.random.RandomState(seed)  # pylint: disable=no-member
  kept = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) < per_class:
      raise ValueError(f"config.data.labels_per_class={per_class}: class {label} has only "
                       f"{len(members)} examples; lower labels_per_class to {len(members)} "
                       "or fewer")
    kept.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(kept))


def split_labelled(domain: Domain, per_class: int, seed: int) -> tuple[Domain, Domain]:
  """The semi-supervised protocol's two parts of one split: `per_class`
  labelled examples of each class (seeded, `stratified_count_indices`), and
  the rest (whose labels the trainer never passes to the step).

  Raises:
    ValueError: as `stratified_count_indices`, or nothing left unlabelled.
  """
  labels = views.domain_labels(domain)
  labelled = stratified_count_indices(labels, per_class, seed)
  rest = np.setdiff1d(np.arange(len(labels)), labelled)
  if not len(rest):
    raise ValueError(f"config.data.labels_per_class={per_class} labels every example of "
                     f"{domain.name}:{domain.split}: nothing is left unlabelled")
  tag = f"{per_class}/class,seed{seed}"
  return (views.subset(domain, labelled, None, split=f"{domain.split}@labelled{tag}"),
          views.subset(domain, rest, None, split=f"{domain.split}@unlabelled{tag}"))


def holdout(domain: Domain, fraction: float, seed: int) -> tuple[Domain, Domain]:
  """`(train, held_out)`: a seeded, class-stratified `fraction` of `domain`
  held out (DomainBed's training-domain validation; at least one example of
  every class stays in training)."""
  if not 0 < fraction < 1:
    raise ValueError(f"config.data.holdout_fraction={fraction!r} must be in (0, 1)")
  labels = views.domain_labels(domain)
  rng = np.random.default_rng(seed)
  held = []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    held.append(members[:min(len(members) - 1, int(round(fraction * len(members))))])
  held_out = np.sort(np.concatenate(held))
  train = np.setdiff1d(np.arange(len(labels)), held_out)
  tag = f"holdout{fraction:g},seed{seed}"
  return (views.subset(domain, train, None, split=f"{domain.split}@train-{tag}"),
          views.subset(domain, held_out, None, split=f"{domain.split}@{tag}"))


def pooled(domains: Sequence[Domain], name: str) -> Domain:
  """Several domains of one label space as one, each example tagged with
  its domain's position (`domain`); one domain is returned as it is."""
  if len(domains) == 1:
    return domains[0]
  first = domains[0]
  for other in domains[1:]:
    if other.class_names != first.class_names:
      raise ValueError(f"{first.name} and {other.name} have different classes "
                       f"({_short(first.class_names)} vs {_short(other.class_names)}); "
                       "labelled domains must share their label space")
  return views.concatenate(domains, name=name)


__all__ = ["SETTINGS", "CLASSIFICATION", "REGRESSION", "UNKNOWN_NAME", "LabelSpace",
           "select_classes", "Preset", "PRESETS", "preset", "infer_setting", "label_space",
           "target_table", "restrict_classes", "stratified_count_indices", "split_labelled",
           "holdout", "pooled"]
