"""Dataset names -> TFDS builders -> random-access domains.

A domain is named `dataset[/config]` (`office31/amazon`, `mnist`) or, for data a
user brings, `image_folder:PATH` / `image_list:PATH` / `image_csv:PATH` (see
`tljax.data.custom`).
Builders of datasets TFDS lacks, or has only with a download, live in this
package and are built from files the user already has (`manual_dir`), never
from the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
from typing import Any, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tljax import registry
from tljax.data.serialization import deterministic_serialization

# Dataset name -> its TFDS builder class. Every module of this package is
# imported on the first lookup and registers the builders it defines
# (`@DATASETS.register(name)`). Builders of datasets TFDS also has, with a
# download (e.g. `mnist`, `domainnet`), stay out of TFDS's own registry
# (`skip_registration=True`): only these classes build them.
DATASETS = registry.Registry("dataset", field="config.source / config.target",
                             scan="tljax.data")


def dataset_names() -> list[str]:
  return DATASETS.names()


@dataclasses.dataclass(frozen=True)
class Domain:
  """One split of one dataset, readable by index.

  Attributes:
    name: `dataset[/config]`, as in the config.
    split: the TFDS split (e.g. `train`, `test`, `train[:80%]`).
    source: random-access sequence of examples `{'image', 'label': int, ...}`
      where `image` is a uint8 HWC array for datasets of fixed-size images and
      the encoded file (JPEG/PNG bytes) for datasets of images of any size, so
      that preprocessing decodes only the resolution it needs
      (`preprocess.decode_image` turns either into an RGB array).
    class_names: names of the label's classes (classification).
    factor_names: names of the label's float factors (regression: the label
      is a `(F,)` float vector); empty for classification.
  """

  name: str
  split: str
  source: Sequence[dict[str, Any]]
  class_names: tuple[str, ...]
  factor_names: tuple[str, ...] = ()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def label_kind(self) -> str:
    return "regression" if self.factor_names else "classification"

  def __len__(self) -> int:
    return len(self.source)


class _InMemorySource(Sequence):
  """A copy of a split in memory, so that training reads no files.

  Fixed-size images are stacked into one array; encoded images of varying size
  (e.g. Office-31's JPEGs) are kept as a list of their bytes.
  """

  def __init__(self, source):
    examples = [source[i] for i in range(len(source))]
    images = [e["image"] for e in examples]
    stackable = all(isinstance(x, np.ndarray) and x.shape == images[0].shape for x in images)
    self._images = np.stack(images) if stackable and images else images
    labels = [e["label"] for e in examples]
    # Class indices, or float factors (regression).
    floats = bool(labels) and np.asarray(labels[0]).dtype.kind == "f"
    self._labels = np.asarray(labels, np.float32 if floats else np.int64)

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._images[index], "label": self._labels[index]}

  def get_batch(self, indices: np.ndarray) -> list[dict[str, Any]]:
    if isinstance(self._images, np.ndarray):
      images = self._images[indices]
    else:
      images = [self._images[i] for i in indices]
    return [{"image": image, "label": label}
            for image, label in zip(images, self._labels[indices])]


def _split_name(name: str) -> tuple[str, str | None, str | None]:
  """`dataset[/config]` or `dataset:PATH` -> (dataset, config, path)."""
  dataset, colon, path = name.partition(":")
  if colon and "/" not in dataset and dataset in DATASETS:
    return dataset, None, path
  dataset, _, config = name.partition("/")
  return dataset, config or None, None


def _check_data_dir(data_dir: str | None) -> None:
  """Rejects a data dir that is, or lies inside, a file, which TFDS fails on with a traceback."""
  if not data_dir:
    return
  given = path = os.path.abspath(os.path.expanduser(data_dir))
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    problem = "is a file, not a directory" if path == given else (
        f"cannot be a directory: {path} is a file")
    raise ValueError(
        f"data_dir {data_dir} {problem}; set --config.data_dir to a directory where datasets "
        "are (or will be) built, e.g. ~/tensorflow_datasets")


def _builder(name: str, data_dir: str | None, manual_dir: str | None, skip_corrupt: bool):
  _check_data_dir(data_dir)
  dataset, config, path = _split_name(name)
  if dataset not in DATASETS:
    raise ValueError(
        f"unknown dataset {name!r}: config.source / config.target must name one "
        f"of {', '.join(dataset_names())} (optionally with a builder config, "
        "e.g. office31/amazon), or image_folder:PATH / image_list:PATH / image_csv:PATH")
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  builder_class = DATASETS.get(dataset)
  kwargs = dict(data_dir=data_dir, file_format="array_record", skip_corrupt=skip_corrupt)

  def make():
    takes_path = getattr(builder_class, "takes_path", False)
    if takes_path != (path is not None):
      raise ValueError(f"{name!r}: " + (f"name the files, e.g. {dataset}:/data/my_domain"
                                        if takes_path else f"{dataset} takes no ':PATH'"))
    if takes_path:
      return builder_class.from_path(path, manual_dir=manual_dir, **kwargs)
    return builder_class(config=config, **kwargs)

  builder = make()
  if not builder.is_prepared():
    _check_writable_for_build(name, builder)
    with _build_lock(builder):
      # Another process (a sweep's parallel runs) may have built it while we
      # waited; a fresh builder reads what it wrote.
      builder = make()
      if not builder.is_prepared():
        logging.info("Building %s into %s (first use).", name, builder.data_dir)
        with deterministic_serialization():
          builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
              manual_dir=manual_dir, try_download_gcs=False))
  return builder


@contextlib.contextmanager
def _build_lock(builder):
  """Serialises first-use builds of one dataset across processes on this host.

  Runs started together (`tljax.sweep launch --parallel`) would otherwise build
  the same dataset at once, and all but the first fail when TFDS moves its
  finished directory into place. An exclusive `flock` on a file beside the
  versioned directory; remote data_dirs (gs://...) are not locked.
  """
  parent = os.path.dirname(os.fspath(builder.data_dir))
  if "://" in parent:
    yield
    return
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, ".build.lock"), "a") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _decoders(builder):
  """Leaves images of no fixed size encoded: preprocessing decodes them at the size it needs."""
  image = builder.info.features["image"]
  if isinstance(image, tfds.features.Image) and None in image.shape:
    return {"image": tfds.decode.SkipDecoding()}
  return None


def _splits(builder) -> tuple[str, ...]:
  return tuple(sorted(builder.info.splits.keys()))


def available_splits(name: str, *, data_dir: str | None = None,
                     manual_dir: str | None = None, skip_corrupt: bool = False) -> tuple[str, ...]:
  """The splits of a dataset, e.g. `('test', 'train')`, building it first if needed.

  Arguments as for `open_domain`. A built dataset is only read: asking for its
  splits and then opening one builds nothing twice.
  """
  return _splits(_builder(name, data_dir, manual_dir, skip_corrupt))


def _check_split(name: str, split: str, splits: Sequence[str]) -> None:
  """Rejects a split expression that names a split the dataset lacks, saying which it has.

  Expressions are TFDS's: split names with optional slices, joined by `+`
  (`train`, `train[80%:]`, `train[:100]+test`); `all` means every split.
  Anything else (e.g. a `tfds.core.ReadInstruction`) is left to TFDS.
  """
  if not isinstance(split, str):
    return
  for part in split.split("+"):
    wanted = re.split(r"[\[(]", part, maxsplit=1)[0].strip()
    if wanted in splits or wanted == "all":
      continue
    first = "train" if "train" in splits or not splits else splits[0]
    within = f" (in {split!r})" if split.strip() != wanted else ""
    raise ValueError(
        f"{name!r} has no split {wanted!r}{within}; its splits are: {', '.join(splits)}. "
        f"Set the option that asks for {wanted!r} (--config.source_split, target_split, "
        f"eval_source_split or eval_target_split) to one of them, e.g. "
        f"--config.eval_target_split={first}, or to a part of one, e.g. {first}[80%:]")


def _check_not_empty(name: str, split: str, builder) -> None:
  """Rejects a split expression that selects no example (`train[90%:]` of a
  few images), which the reader fails on without naming it."""
  if not isinstance(split, str):
    return
  try:
    count = builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError):
    return  # an expression TFDS resolves only when reading: left to it
  if count == 0:
    sizes = ", ".join(f"{s}: {builder.info.splits[s].num_examples}" for s in _splits(builder))
    raise ValueError(
        f"{name!r} split {split!r} holds no examples (the dataset has {sizes}); set the "
        "option that asks for it (--config.source_split, target_split, eval_source_split, "
        "eval_target_split or source_val_split) to a part with examples")


def _check_writable_for_build(name: str, builder) -> None:
  """A dataset that must be built into a data dir this process cannot write:
  one line naming both, instead of an OSError from inside the build."""
  directory = os.fspath(builder.data_dir)
  if "://" in directory:
    return
  existing = directory
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise PermissionError(
        f"{name} is not built in the data dir yet, and {existing} is not writable, so it cannot "
        f"be built into {directory}; set --config.data_dir to a directory you can write to "
        "(or build the dataset there once, as a user who can)")


def open_domain(name: str, split: str, *, data_dir: str | None = None,
                manual_dir: str | None = None, cache: bool = False,
                skip_corrupt: bool = False) -> Domain:
  """Opens a split of a dataset, building the dataset first if needed.

  Args:
    name: `dataset[/config]`, or `image_folder:PATH` / `image_list:PATH` for
      custom data.
    split: TFDS split expression of the dataset's splits (`available_splits`),
      e.g. `train`, `train[:80%]`.
    data_dir: TFDS data dir (None: the TFDS default, `~/tensorflow_datasets`).
    manual_dir: where builders that need user-provided files look for them
      (the dataset's root, or a directory holding it, e.g. `office31/`).
    cache: hold the whole split in memory (decoded arrays for fixed-size
      images, the encoded files otherwise).
    skip_corrupt: when building, leave unreadable images out (with a count in
      the log) instead of stopping with an error that names the file.

  Raises:
    ValueError: an unknown dataset, a split it lacks, a `data_dir` that is a
      file, unreadable images (`image_files.UnreadableImageError`).
    FileNotFoundError: files a builder needs are missing.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = _builder(name, data_dir, manual_dir, skip_corrupt)
  _check_split(name, split, _splits(builder))
  _check_not_empty(name, split, builder)
  source = builder.as_data_source(split=split, decoders=_decoders(builder))
  if cache:
    source = _InMemorySource(source)
  label = builder.info.features["label"]
  if isinstance(label, tfds.features.ClassLabel):
    return Domain(name=name, split=split, source=source, class_names=tuple(label.names))
  # Regression: a float vector, its factors named in the builder's metadata.
  factors = tuple((builder.info.metadata or {}).get("factor_names", ()))
  if len(factors) != int(np.prod(label.shape)):
    factors = tuple(f"factor{i}" for i in range(int(np.prod(label.shape))))
  return Domain(name=name, split=split, source=source, class_names=(), factor_names=factors)
