"""Dataset names -> TFDS builders -> random-access domains."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

# TFDS dataset name -> the tljax module whose import registers its builder.
_BUILDER_MODULES: dict[str, str] = {
    "digits": "tljax.data.digits",
    "digits_m": "tljax.data.digits",
}


def register_builder_module(dataset: str, module: str) -> None:
  """Declares that importing `module` registers the TFDS builder `dataset`."""
  _BUILDER_MODULES[dataset] = module


def dataset_names() -> list[str]:
  return sorted(_BUILDER_MODULES)


@dataclasses.dataclass(frozen=True)
class Domain:
  """One split of one dataset, readable by index.

  Attributes:
    name: `dataset[/config]`, as in the config.
    split: the TFDS split (e.g. `train`, `test`, `train[:80%]`).
    source: random-access sequence of examples `{'image': uint8 HWC, 'label': int}`.
    class_names: names of the label's classes.
  """

  name: str
  split: str
  source: Sequence[dict[str, Any]]
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.source)


class _InMemorySource(Sequence):
  """A decoded copy of a small split, so that training reads no files."""

  def __init__(self, source):
    examples = [source[i] for i in range(len(source))]
    self._images = np.stack([e["image"] for e in examples])
    self._labels = np.asarray([e["label"] for e in examples], np.int64)

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._images[index], "label": self._labels[index]}

  def get_batch(self, indices: np.ndarray) -> list[dict[str, Any]]:
    images, labels = self._images[indices], self._labels[indices]
    return [{"image": image, "label": label} for image, label in zip(images, labels)]


def _builder(name: str, data_dir: str | None, manual_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  dataset = name.split("/")[0]
  if dataset not in _BUILDER_MODULES:
    raise ValueError(
        f"unknown dataset {name!r}: config.source / config.target must name one "
        f"of {', '.join(dataset_names())} (optionally with a builder config, "
        "e.g. office31/amazon)")
  importlib.import_module(_BUILDER_MODULES[dataset])
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    logging.info("Building %s into %s (first use).", name, builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
        try_download_gcs=False))
  return builder


def open_domain(name: str, split: str, *, data_dir: str | None = None,
                manual_dir: str | None = None, cache: bool = False) -> Domain:
  """Opens a split of a dataset, building the dataset first if needed.

  Args:
    name: `dataset[/config]`.
    split: TFDS split expression.
    data_dir: TFDS data dir (None: the TFDS default, `~/tensorflow_datasets`).
    manual_dir: where builders that need user-provided files look for them.
    cache: decode the whole split into memory (for small datasets).
  """
  builder = _builder(name, data_dir, manual_dir)
  source = builder.as_data_source(split=split)
  if cache:
    source = _InMemorySource(source)
  return Domain(name=name, split=split, source=source,
                class_names=tuple(builder.info.features["label"].names))
