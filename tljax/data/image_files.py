"""What builders of image-file datasets share: finding files, reading lists, checking images.

The datasets of domain adaptation (Office-31, Office-Home, VisDA-2017,
DomainNet) and the user's own folders are directories of JPEG/PNG files,
sometimes with image-list files (`relative/path.jpg label` per line). Their
builders (`office.py`, `visda.py`, `domainnet.py`, `custom.py`) differ only in
where the files are and what the classes are called; the rest is here:

- `find_root`: the dataset's root under `manual_dir`, or an error that says
  where it looked, what layout it expected and where the data is published;
- `entries_from_list` / `entries_from_class_folders`: (file, label) entries, the
  label taken from the file's class folder so that it is the same whichever of
  the two the user has;
- `ImageFileBuilder`: a TFDS builder that checks every image while writing
  (in parallel threads), stores 8-bit RGB JPEG/PNG files byte for byte and
  re-encodes anything else (grey, 16-bit, CMYK, palette, BMP, ...) as RGB PNG
  by the rules of `image_modes`, and either stops at an unreadable image with
  its path or, with `skip_corrupt=True`, leaves it out and logs how many it
  left out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import pathlib
from typing import Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from tljax.data import image_modes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm")
# Images checked at once while building; bounded so that memory stays small.
_CHECK_CHUNK = 256


class DatasetFilesNotFoundError(FileNotFoundError):
  """The files a builder reads are not where it looked."""


class UnreadableImageError(ValueError):
  """An image file that cannot be read or decoded."""

  def __init__(self, path: str, reason: str):
    # One line: the command line prints it after "error: ".
    reason = " ".join(reason.split())
    super().__init__(
        f"cannot read image {path}: {reason}. Replace or remove the file, or leave "
        "unreadable images out with --config.data.skip_corrupt=True "
        "(open_domain(..., skip_corrupt=True)).")
    self.path = path


def is_image_file(name: str) -> bool:
  # Hidden files include macOS's "._x.jpg" resource forks, which are not images.
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


# ----------------------------------------------------------------------------
# Finding the files.
# ----------------------------------------------------------------------------


def manual_dir_of(dl_manager) -> pathlib.Path | None:
  """The manual dir TFDS was given (or its default), whether or not it exists."""
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except (AssertionError, ValueError):
    # TFDS refuses a missing or empty manual dir; the path is still what the
    # error message has to name.
    path = getattr(dl_manager, "_manual_dir", None)
    return pathlib.Path(path) if path else None


def candidate_roots(manual_dir: pathlib.Path | None,
                    folder_names: Sequence[str]) -> list[pathlib.Path]:
  """`manual_dir` itself, then the dataset's usual folder names inside it."""
  if manual_dir is None:
    return []
  return [manual_dir] + [manual_dir / name for name in folder_names]


def find_root(manual_dir: pathlib.Path | None, folder_names: Sequence[str],
              is_root: Callable[[pathlib.Path], bool], *, what: str, layout: str,
              url: str) -> pathlib.Path:
  """The first candidate root that `is_root` accepts, or a `DatasetFilesNotFoundError`.

  Args:
    manual_dir: the user's manual dir.
    folder_names: folders inside `manual_dir` that may hold the dataset.
    is_root: whether a directory has the expected layout.
    what: the dataset (and domain) for the message, e.g. "Office-31 (amazon)".
    layout: the expected layout, one path pattern per line, relative to the root.
    url: where the data is published.
  """
  for root in candidate_roots(manual_dir, folder_names):
    if root.is_dir() and is_root(root):
      return root
  raise missing_files_error(what, manual_dir, folder_names, layout, url)


def missing_files_error(what: str, manual_dir: pathlib.Path | None, folder_names: Sequence[str],
                        layout: str, url: str) -> DatasetFilesNotFoundError:
  """The error for files not found: where it looked, what it expected, where to get them."""
  folders = ", ".join(folder_names)
  # Without config.manual_dir, TFDS looks in <data_dir>/downloads/manual.
  name = ("TFDS's default manual dir (config.manual_dir is not set)"
          if manual_dir is not None and manual_dir.parts[-2:] == ("downloads", "manual")
          else "config.manual_dir")
  if manual_dir is None:
    where = "no manual_dir was given (set config.manual_dir)"
  elif not manual_dir.is_dir():
    where = f"{name} {manual_dir} does not exist"
  else:
    where = f"not in {manual_dir} ({name})" + (f" nor in its folders {folders}"
                                              if folder_names else "")
  indented = "\n".join("  <root>/" + line.strip() for line in layout.strip().splitlines())
  inside = f" or its folder {' / '.join(folder_names)}" if folder_names else ""
  return DatasetFilesNotFoundError(
      f"{what}: files not found: {where}.\nExpected, with <root> = config.manual_dir{inside}:\n"
      f"{indented}\nThe data is published at {url}; download and extract it yourself "
      "(tljax never downloads).")


# ----------------------------------------------------------------------------
# Entries: which files, with which labels.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image to store.

  Attributes:
    key: unique within the split (a list may name a file twice).
    path: the file.
    label: index into the dataset's class names, or the factor values of a
      regression dataset.
    file_name: stored with the example: the path relative to the dataset's root.
  """

  key: str
  path: str
  label: int | tuple[float, ...]
  file_name: str


def read_list(list_file: pathlib.Path) -> list[tuple[int, str, int]]:
  """`(line number, path, label)` of an image list: `path label` per line.

  The path is everything before the last field, so paths with spaces work.
  """
  rows = []
  with open(list_file, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      fields = line.rsplit(maxsplit=1)
      if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise ValueError(f"{list_file}:{number}: expected 'relative/path.jpg <integer label>', "
                         f"got {line!r}")
      rows.append((number, fields[0], int(fields[1])))
  if not rows:
    raise ValueError(f"{list_file} lists no images")
  return rows


def resolve_base(list_file: pathlib.Path, first_path: str,
                 bases: Iterable[pathlib.Path]) -> pathlib.Path:
  """The directory the list's relative paths start from: the first base holding its first file."""
  bases = list(bases)
  for base in bases:
    if (base / first_path).exists():
      return base
  raise DatasetFilesNotFoundError(
      f"{list_file}: its first image {first_path!r} is in none of "
      f"{', '.join(str(b) for b in bases)}; the list's paths must be relative to one of them")


def entries_from_list(list_file: pathlib.Path, bases: Sequence[pathlib.Path],
                      class_names: Sequence[str]) -> list[Entry]:
  """Entries of an image list whose files sit in folders named after their class.

  The label is the index of the file's folder in `class_names`, so lists that
  number the classes in another order still give the same labels; the list's
  own numbers only have to agree with the folders (one folder per number).
  """
  rows = read_list(list_file)
  base = resolve_base(list_file, rows[0][1], bases)
  index = {name: i for i, name in enumerate(class_names)}
  folder_of_label: dict[int, str] = {}
  entries = []
  for number, path, label in rows:
    folder = pathlib.PurePosixPath(path.replace("\\", "/")).parent.name
    if folder not in index:
      raise ValueError(f"{list_file}:{number}: {path!r} is not in a folder named after one of "
                       f"the {len(class_names)} classes ({', '.join(class_names[:4])}, ...)")
    if folder_of_label.setdefault(label, folder) != folder:
      raise ValueError(f"{list_file}:{number}: label {label} is {folder!r} here but "
                       f"{folder_of_label[label]!r} on an earlier line")
    entries.append(Entry(key=f"{number:08d} {path}", path=str(base / path), label=index[folder],
                         file_name=path))
  return entries


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files under `folder` (recursively), in a fixed order."""
  found = []
  for directory, subdirs, files in os.walk(folder):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    found += [pathlib.Path(directory, f) for f in sorted(files) if is_image_file(f)]
  return found


def entries_from_class_folders(root: pathlib.Path, class_names: Sequence[str], *,
                               relative_to: pathlib.Path | None = None) -> list[Entry]:
  """Entries of `root/<class>/**/<image>`, every class folder required.

  Args:
    root: the directory of class folders.
    class_names: the classes, in label order (and the names of their folders).
    relative_to: the dataset's root, which `file_name`s start from (default `root`).
  """
  present = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
  missing = [name for name in class_names if name not in present]
  if missing:
    raise DatasetFilesNotFoundError(
        f"{root}: {len(missing)} of the {len(class_names)} class folders are missing "
        f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
  unknown = sorted(present - set(class_names))
  if unknown:
    raise ValueError(f"{root}: folders {unknown[:5]} are not classes of this dataset")
  entries = []
  for label, folder in enumerate(class_names):
    for path in list_images(root / folder):
      file_name = path.relative_to(relative_to or root).as_posix()
      entries.append(Entry(key=file_name, path=str(path), label=label, file_name=file_name))
  if not entries:
    raise DatasetFilesNotFoundError(f"{root}: the class folders hold no images "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
  return entries


# ----------------------------------------------------------------------------
# Checking and storing images.
# ----------------------------------------------------------------------------


def load_checked(path: str, size: tuple[int, int] | None = None) -> bytes:
  """The file's bytes if it is an 8-bit RGB JPEG or PNG that decodes, else an RGB PNG of it.

  Anything else (grey, 16-bit, float, CMYK, palette, alpha, BMP, TIFF, ...) is
  converted by `image_modes.to_rgb`, the rule preprocessing decodes with too,
  and stored as an 8-bit RGB PNG.

  Args:
    path: the image file.
    size: `(height, width)` the image must have, if any.

  Raises:
    UnreadableImageError: the file cannot be read or decoded, or has another size.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UnreadableImageError(path, e.strerror or str(e)) from e
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      if size is not None and (image.height, image.width) != tuple(size):
        raise ValueError(f"the image is {image.height}x{image.width}, not {size[0]}x{size[1]}")
      if image.format in ("JPEG", "MPO") and image.mode == "RGB":
        # A JPEG decoded at 1/8 scale still parses every byte of it, which is
        # what catches truncated files, at a fraction of the cost.
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return data
      # Not `image.mode`: PIL opens 16-bit RGB PNGs as "RGB" too.
      if image_modes.png_rawmode(image) == "RGB":
        image.load()
        return data
      rgb = image_modes.to_rgb(image, data)
      out = io.BytesIO()
      rgb.save(out, format="PNG")
      return out.getvalue()
  except Exception as e:  # pylint: disable=broad-except
    # PIL reports bad files with many types (OSError, SyntaxError, ValueError,
    # zlib.error, DecompressionBombError); all mean the same here.
    raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e


def _try_load(path: str, size: tuple[int, int] | None) -> bytes | UnreadableImageError:
  try:
    return load_checked(path, size)
  except UnreadableImageError as e:
    return e


class ImageFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder of image files: `{'image', 'label', 'file_name'}` examples.

  Subclasses set `name`, `BUILDER_CONFIGS`, `CLASS_NAMES` (or override
  `class_names`), `HOMEPAGE`, and write `_split_generators`, returning
  `{split: self._generate_examples(entries)}`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES: tuple[str, ...] = ()
  IMAGE_SHAPE: tuple[int | None, int | None, int] = (None, None, 3)
  HOMEPAGE = ""
  DESCRIPTION = ""

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    self._skip_corrupt = skip_corrupt
    super().__init__(**kwargs)

  def class_names(self) -> Sequence[str]:
    return self.CLASS_NAMES

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(names=list(self.class_names())),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  def _generate_examples(self, entries: Sequence[Entry]) -> Iterator[tuple[str, dict]]:
    skipped = []
    workers = min(16, max(2, os.cpu_count() or 2))
    size = None if None in self.IMAGE_SHAPE[:2] else self.IMAGE_SHAPE[:2]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for start in range(0, len(entries), _CHECK_CHUNK):
        chunk = entries[start:start + _CHECK_CHUNK]
        loads = pool.map(_try_load, [e.path for e in chunk], [size] * len(chunk))
        for entry, loaded in zip(chunk, loads):
          if isinstance(loaded, UnreadableImageError):
            if not self._skip_corrupt:
              raise loaded
            skipped.append(entry.path)
            continue
          yield entry.key, {"image": loaded, "label": entry.label, "file_name": entry.file_name}
    if entries and len(skipped) == len(entries):
      raise ValueError(
          f"{self.info.full_name}: every one of its {len(entries)} images is unreadable (e.g. "
          f"{skipped[0]}), so skip_corrupt=True would leave an empty split; replace the files "
          "with images")
    if skipped:
      logging.warning("%s: skipped %d unreadable image(s) of %d (skip_corrupt=True): %s%s",
                      self.info.full_name, len(skipped), len(entries), ", ".join(skipped[:10]),
                      ", ..." if len(skipped) > 10 else "")


def check_class_names(names: Sequence[str], where: str) -> tuple[str, ...]:
  """Rejects empty or repeated class names, which would make labels ambiguous."""
  names = tuple(names)
  if not names:
    raise ValueError(f"{where}: no classes")
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated or any(not n for n in names):
    raise ValueError(f"{where}: class names must be unique and non-empty (repeated: {repeated})")
  return names


def images_to_uint8(images: np.ndarray) -> np.ndarray:
  """Rounds and clips pixel values to uint8."""
  return np.clip(np.round(images), 0, 255).astype(np.uint8)
