"""The user's own domains: a folder per class, an image list, or a CSV of regression targets.

    config.source = "image_folder:/data/product_photos"    # <root>/<class>/**/*.jpg
    config.target = "image_folder:shop_photos"             # relative to config.manual_dir
    config.source = "image_list:/data/office31/image_list/amazon.txt"
    config.source = "image_csv:/data/sprites/color.csv"     # path,scale,x,y per line

`image_folder:ROOT`: every subfolder of ROOT is a class (sorted by name), its
images (searched recursively) are the class's examples. A `classes.txt` in
ROOT (one name per line) fixes the classes and their order instead, and may
name classes without a folder, so that two domains with different folders
still share one label space.

`image_list:FILE`: TLlib's format, `relative/path.jpg <integer label>` per
line. Paths are relative to FILE's folder, or its parent (TLlib keeps lists
in `<root>/image_list/`), or `config.manual_dir`, whichever holds the first
listed file; absolute paths are used as they are. Class names come from a
`classes.txt` (one per line, label order) next to FILE or in that root, or
else are the numbers "0".."K-1".

`image_csv:FILE`: a regression domain. The CSV's header names the columns:
the image path first (any name, e.g. `path`), then the factors, e.g.
`path,scale,position x,position y`; each row is an image and its factor
values (finite numbers). Paths are relative to FILE's folder (absolute ones
are used as they are). The label is the vector of factors, named after the
header (`Domain.factor_names`).

Any way the dataset has one split, `train` (use TFDS slicing such as
`train[:80%]` / `train[80%:]` for a held-out part: stored examples are in a
hashed order, so slices mix the classes). It is built once into the TFDS data
dir under a config named after the folder or file and a fingerprint of its
contents (names, sizes and modification times of the images; for a list, its
text too), so changing the files makes a new build instead of reading a stale
one.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import pathlib
import re
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS

_CLASSES_FILE = "classes.txt"


def resolve_user_path(path: str, manual_dir: str | None) -> pathlib.Path:
  """`path` with `~` expanded; a relative one is taken from `manual_dir` (else the working dir)."""
  expanded = pathlib.Path(os.path.expanduser(path))
  if not expanded.is_absolute() and manual_dir:
    expanded = pathlib.Path(manual_dir) / expanded
  return pathlib.Path(os.path.abspath(expanded))


def _config(path: pathlib.Path, fingerprint: str) -> tfds.core.BuilderConfig:
  stem = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_")[:40] or "data"
  return tfds.core.BuilderConfig(name=f"{stem}_{fingerprint[:12]}", description=str(path))


def _read_classes(path: pathlib.Path) -> tuple[str, ...]:
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f if line.strip()]
  return image_files.check_class_names(names, str(path))


@DATASETS.register("image_folder")
class ImageFolder(image_files.ImageFileBuilder, skip_registration=True):
  """A folder per class: `image_folder:ROOT`."""

  name = "image_folder"
  takes_path = True
  DESCRIPTION = "Images in a folder per class."
  # A new version rebuilds folders built before images of 16-bit, 32-bit
  # integer and float modes were scaled to 8 bits instead of clipped.
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Images of every mode converted to RGB by tljax.data.image_modes."}

  def __init__(self, *, class_names: Sequence[str], entries: Sequence[image_files.Entry],
               **kwargs):
    self._class_names = tuple(class_names)
    self._entries = list(entries)
    super().__init__(**kwargs)
    # TFDS pickles a builder (e.g. into grain's worker processes) as the
    # arguments it calls `__init__` with again.
    self._original_state.update(class_names=self._class_names, entries=self._entries)

  @classmethod
  def from_path(cls, path: str, *, manual_dir: str | None = None, **kwargs) -> "ImageFolder":
    """The builder of the folder `path` (relative paths start at `manual_dir`)."""
    root = resolve_user_path(path, manual_dir)
    layout = ("<root>/<class>/**/*.jpg (a folder per class, any of "
              f"{', '.join(image_files.IMAGE_EXTENSIONS)}); optional <root>/{_CLASSES_FILE}")
    if not root.is_dir():
      raise image_files.DatasetFilesNotFoundError(
          f"image_folder:{path}: {root} is not a directory. Expected {layout}.")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if (root / _CLASSES_FILE).is_file():
      class_names = _read_classes(root / _CLASSES_FILE)
      unknown = sorted(set(folders) - set(class_names))
      if unknown:
        raise ValueError(f"image_folder:{path}: folders {unknown[:5]} are not in "
                         f"{root / _CLASSES_FILE}")
      if not set(folders) & set(class_names):
        raise image_files.DatasetFilesNotFoundError(
            f"image_folder:{path}: none of the {len(class_names)} classes of "
            f"{root / _CLASSES_FILE} ({', '.join(class_names[:4])}, ...) has a folder in "
            f"{root}. Expected {layout}.")
    elif not folders:
      raise image_files.DatasetFilesNotFoundError(
          f"image_folder:{path}: {root} has no class folders"
          f"{' (it is empty)' if not any(root.iterdir()) else ''}. Expected {layout}.")
    else:
      class_names = image_files.check_class_names(folders, f"image_folder:{path} ({root})")
    digest = hashlib.sha256(f"{root}\n{class_names}\n".encode())
    entries, empty = [], []
    for label, name in enumerate(class_names):
      files = image_files.list_images(root / name) if (root / name).is_dir() else []
      if not files:
        empty.append(name)
      for file in files:
        stat = file.stat()
        key = file.relative_to(root).as_posix()
        digest.update(f"{key}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        entries.append(image_files.Entry(key=key, path=str(file), label=label, file_name=key))
    if not entries:
      raise image_files.DatasetFilesNotFoundError(
          f"image_folder:{path}: no images in the class folders of {root}. Expected {layout}.")
    if empty:
      logging.warning("image_folder:%s: no images for %d class(es): %s", path, len(empty),
                      ", ".join(empty[:10]))
    return cls(config=_config(root, digest.hexdigest()), class_names=class_names,
               entries=entries, **kwargs)

  def class_names(self) -> Sequence[str]:
    return self._class_names

  def _split_generators(self, dl_manager):
    del dl_manager  # the files were found in `from_path`
    return {"train": self._generate_examples(self._entries)}


@DATASETS.register("image_list")
class ImageList(ImageFolder, skip_registration=True):
  """TLlib's image list: `image_list:FILE` with `relative/path.jpg label` lines."""

  name = "image_list"
  DESCRIPTION = "Images named by an image list ('path label' per line)."

  @classmethod
  def from_path(cls, path: str, *, manual_dir: str | None = None, **kwargs) -> "ImageList":
    """The builder of the list file `path` (relative paths start at `manual_dir`)."""
    list_file = resolve_user_path(path, manual_dir)
    if not list_file.is_file():
      raise image_files.DatasetFilesNotFoundError(
          f"image_list:{path}: {list_file} is not a file. Expected a text file with "
          "'relative/path.jpg <integer label>' per line (TLlib's image_list/*.txt).")
    rows = image_files.read_list(list_file)
    bases = [list_file.parent, list_file.parent.parent]
    if manual_dir:
      bases.append(pathlib.Path(os.path.abspath(os.path.expanduser(manual_dir))))
    base = image_files.resolve_base(list_file, rows[0][1], bases)
    labels = [label for _, _, label in rows]
    if min(labels) < 0:
      raise ValueError(f"{list_file}: labels must be >= 0")
    classes_file = next((d / _CLASSES_FILE for d in (list_file.parent, base)
                         if (d / _CLASSES_FILE).is_file()), None)
    if classes_file is not None:
      class_names = _read_classes(classes_file)
      if max(labels) >= len(class_names):
        raise ValueError(f"{list_file}: label {max(labels)} but {classes_file} names only "
                         f"{len(class_names)} classes")
    else:
      class_names = tuple(str(i) for i in range(max(labels) + 1))
    digest = hashlib.sha256(f"{list_file}\n{base}\n{class_names}\n".encode())
    digest.update(list_file.read_bytes())
    entries = [image_files.Entry(key=f"{number:08d} {rel}", path=str(base / rel), label=label,
                                 file_name=rel)
               for number, rel, label in rows]
    # The listed files too, as for a folder: a replaced, truncated or deleted
    # image makes a new build (which then names a file that is gone).
    for entry in entries:
      try:
        stat = os.stat(entry.path)
        digest.update(f"{entry.key}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
      except OSError:
        digest.update(f"{entry.key}\tmissing\n".encode())
    return cls(config=_config(list_file, digest.hexdigest()), class_names=class_names,
               entries=entries, **kwargs)


@DATASETS.register("image_csv")
class ImageCSV(image_files.ImageFileBuilder, skip_registration=True):
  """Regression targets of images: `image_csv:FILE` with `path,factor1,...` rows."""

  name = "image_csv"
  takes_path = True
  DESCRIPTION = "Images and their regression targets, from a CSV ('path,factor1,...' rows)."

  def __init__(self, *, factor_names: Sequence[str], entries: Sequence[image_files.Entry],
               **kwargs):
    self._factor_names = tuple(factor_names)
    self._entries = list(entries)
    super().__init__(**kwargs)
    # TFDS pickles a builder (e.g. into grain's worker processes) as the
    # arguments it calls `__init__` with again.
    self._original_state.update(factor_names=self._factor_names, entries=self._entries)

  @classmethod
  def from_path(cls, path: str, *, manual_dir: str | None = None, **kwargs) -> "ImageCSV":
    """The builder of the CSV `path` (relative paths start at `manual_dir`).

    Raises:
      DatasetFilesNotFoundError: the CSV or an image it names is missing.
      ValueError: a header without factors, or a row without a number for
        every factor (named by line).
    """
    csv_file = resolve_user_path(path, manual_dir)
    layout = ("a CSV with a header 'path,factor1,factor2,...' and one "
              "'relative/image.png,0.5,0.25,...' row per image, paths relative to its folder")
    if not csv_file.is_file():
      raise image_files.DatasetFilesNotFoundError(
          f"image_csv:{path}: {csv_file} is not a file. Expected {layout}.")
    with open(csv_file, encoding="utf-8", newline="") as f:
      lines = [(number, row) for number, row in enumerate(csv.reader(f), start=1)
               if row and not (len(row) == 1 and not row[0].strip())]
    if not lines or len(lines[0][1]) < 2:
      raise ValueError(f"{csv_file}: the first line must be a header naming the image column "
                       f"and at least one factor, e.g. 'path,scale'; expected {layout}")
    factor_names = tuple(c.strip() for c in lines[0][1][1:])
    if not all(factor_names) or len(set(factor_names)) != len(factor_names):
      raise ValueError(f"{csv_file}:{lines[0][0]}: the header's factor names must be unique and "
                       f"non-empty, got {list(factor_names)}")
    digest = hashlib.sha256(f"{csv_file}\n".encode())
    digest.update(csv_file.read_bytes())
    entries = []
    for number, row in lines[1:]:
      if len(row) != len(factor_names) + 1:
        raise ValueError(f"{csv_file}:{number}: expected {len(factor_names) + 1} fields (the "
                         f"image and {', '.join(factor_names)}), got {len(row)}: {row!r}")
      rel = row[0].strip()
      values = []
      for name, text in zip(factor_names, row[1:]):
        try:
          value = float(text)
        except ValueError:
          value = math.nan
        if not math.isfinite(value):
          raise ValueError(f"{csv_file}:{number}: {text.strip()!r} is not a finite number "
                           f"(factor {name!r})")
        values.append(value)
      image = pathlib.Path(rel) if os.path.isabs(rel) else csv_file.parent / rel
      if not image.is_file():
        raise image_files.DatasetFilesNotFoundError(
            f"{csv_file}:{number}: image {rel!r} not found ({image}); paths are relative to "
            "the CSV's folder")
      stat = image.stat()
      digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
      entries.append(image_files.Entry(key=f"{number:08d} {rel}", path=str(image),
                                       label=tuple(values), file_name=rel))
    if not entries:
      raise ValueError(f"{csv_file} lists no images; expected {layout}")
    return cls(config=_config(csv_file, digest.hexdigest()), factor_names=factor_names,
               entries=entries, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
            "label": tfds.features.Tensor(shape=(len(self._factor_names),), dtype=np.float32),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        # What `tljax.data.registry.open_domain` names the label's factors.
        metadata=tfds.core.MetadataDict(factor_names=list(self._factor_names)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the files were found in `from_path`
    return {"train": self._generate_examples(self._entries)}
