"""dSprites and MPI3D, the image-regression domains of TLlib, built from the user's files.

    config.source = "dsprites/color"   # manual_dir: dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz
    config.target = "dsprites/noisy"   #   (and scream.jpg for dsprites/scream)
    config.source = "mpi3d/real"       # manual_dir: mpi3d_real.npz (realistic, toy alike)

TLlib's `examples/domain_adaptation/image_regression` reads image lists it
downloads; tljax never downloads, and builds the domains from the files the
datasets are published as, in `config.manual_dir` or its `dsprites` /
`mpi3d` folder:

- dSprites (Matthey et al. 2017): `imgs` `(737280, 64, 64)` binary sprites and
  their `latents_values` (color, shape, scale, orientation, position x,
  position y). The label is TLlib's `(scale, position x, position y)`, in
  dSprites' units (scale 0.5..1, positions 0..1). TLlib's three domains are
  disentanglement_lib's transformations of them (the builder configs):
  `color` (the sprite times a random colour, each channel U(0.5, 1)),
  `noisy` (white over uniform noise: `min(sprite + noise, 1)`) and `scream`
  (over a random 64x64 crop of Munch's The Scream shrunk to fit 350x274,
  colour-shifted, `(crop + U(0, 1)^3) / 2`, the sprite's pixels inverted);
  `scream` reads `scream.jpg` beside the npz.
- MPI3D (Gondal et al. 2019): `images` `(1036800, 64, 64, 3)` of a robot arm
  in the factor grid (object colour 6, shape 6, size 2, camera height 3,
  background colour 3, horizontal axis 40, vertical axis 40), rows in that
  order (C order); `real`, `realistic` and `toy` are its three files. The
  label is TLlib's `(horizontal axis, vertical axis) / 39`.

Each domain is a seeded subset of the file: `max_examples` rows (default
60,000; every row of a smaller file) drawn without replacement, 80% `train`
and 20% `test`, with a seed of its own per domain, so two domains hold
different sprites (TLlib's lists are not described beyond their files). The
arrays are read row by row from the npz (`read_npz_rows`), never whole: the
real MPI3D file is 12 GB. Builds are deterministic (the same files give the
same bytes).
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import zipfile
from typing import Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS
from tljax.data.serialization import deterministic_serialization

IMAGE_SIZE = 64
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_FACTORS = ("scale", "position x", "position y")  # TLlib's names
DSPRITES_COLUMNS = (2, 4, 5)  # their columns of `latents_values`
SCREAM_FILE = "scream.jpg"
MPI3D_FACTORS = ("horizontal axis", "vertical axis")
# MPI3D's factor grid, in the order of its rows.
MPI3D_SIZES = (6, 6, 2, 3, 3, 40, 40)
DSPRITES_URL = "https://github.com/deepmind/dsprites-dataset (" + DSPRITES_FILE + ")"
SCREAM_URL = ("https://upload.wikimedia.org/wikipedia/commons/f/f4/The_Scream.jpg "
              "(disentanglement_lib's scream.jpg)")
MPI3D_URL = "https://github.com/rr-learning/disentanglement_dataset (mpi3d_<domain>.npz)"
_TEST_FRACTION = 0.2


# ----------------------------------------------------------------------------
# Reading rows of an npz without loading its arrays.
# ----------------------------------------------------------------------------


def npz_array_shape(path: pathlib.Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
  """`(shape, dtype)` of array `key` of the npz `path`, from its header alone."""
  with _open_member(path, key) as f:
    shape, dtype, _ = _read_header(path, key, f)
  return shape, dtype


def read_npz_rows(path: pathlib.Path, key: str, rows: Sequence[int]
                  ) -> Iterator[tuple[int, np.ndarray]]:
  """`(row, array[row])` for each of the sorted `rows` of array `key` of the npz
  `path`, read in one forward pass (compressed or not) and never whole."""
  with _open_member(path, key) as f:
    shape, dtype, start = _read_header(path, key, f)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    position = 0
    for row in rows:
      if not 0 <= row < shape[0] or row < position:
        raise ValueError(f"rows must be sorted indices below {shape[0]}, got {row}")
      f.seek(start + row * row_bytes)
      data = f.read(row_bytes)
      if len(data) != row_bytes:
        raise ValueError(f"{path}: array {key!r} ends before row {row}; the file is damaged or "
                         "incomplete, download it again")
      position = row + 1
      yield row, np.frombuffer(data, dtype).reshape(shape[1:])


def _open_member(path: pathlib.Path, key: str):
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}; the file is damaged or "
                     "incomplete, download it again") from e
  with archive:
    names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    if key not in names:
      raise ValueError(f"{path} has no array {key!r} (it has {', '.join(names) or 'none'}); "
                       "is it the published file?")
    # An open member keeps the file open past the archive's close.
    return archive.open(key + ".npy")


def _read_header(path, key, f) -> tuple[tuple[int, ...], np.dtype, int]:
  version = np.lib.format.read_magic(f)
  read = {(1, 0): np.lib.format.read_array_header_1_0,
          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
  if read is None:
    raise ValueError(f"{path}: array {key!r} has .npy format {version}, which tljax cannot read")
  shape, fortran_order, dtype = read(f)
  if fortran_order or dtype.hasobject:
    raise ValueError(f"{path}: array {key!r} is not a C-ordered array of numbers")
  return tuple(shape), dtype, f.tell()


# ----------------------------------------------------------------------------
# Subsets and looks.
# ----------------------------------------------------------------------------


def subset_rows(num_rows: int, max_examples: int, seed: int) -> dict[str, np.ndarray]:
  """`{'train', 'test'}`: sorted, disjoint rows of a seeded subset of at most
  `max_examples` of `num_rows`, 80% / 20%."""
  rng = np.random.default_rng(seed)
  chosen = rng.permutation(num_rows)[:min(num_rows, max_examples)]
  num_test = int(round(_TEST_FRACTION * len(chosen)))
  return {"train": np.sort(chosen[num_test:]), "test": np.sort(chosen[:num_test])}


def load_scream(path: pathlib.Path) -> np.ndarray:
  """The Scream as floats in [0, 1], shrunk to fit 350x274 (disentanglement_lib's
  `thumbnail`, PIL's default filter)."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  try:
    with PIL.Image.open(path) as image:
      image = image.convert("RGB")
      image.thumbnail((350, 274))
      pixels = np.asarray(image, np.float64) / 255.0
  except Exception as e:  # pylint: disable=broad-except
    raise image_files.UnreadableImageError(str(path), f"{type(e).__name__}: {e}") from e
  if min(pixels.shape[:2]) < IMAGE_SIZE:
    raise ValueError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} after shrinking to fit "
                     f"350x274; the background must be at least {IMAGE_SIZE} px a side")
  return pixels


def dsprites_look(look: str, sprite: np.ndarray, rng: np.random.Generator,
                  scream: np.ndarray | None = None) -> np.ndarray:
  """`(64, 64, 3)` uint8 of a `(64, 64)` binary sprite in TLlib's domain `look`."""
  mask = sprite.astype(np.float64)[..., None]
  if look == "color":
    image = mask * rng.uniform(0.5, 1.0, size=3)
  elif look == "noisy":
    image = np.minimum(mask + rng.uniform(0.0, 1.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3)), 1.0)
  elif look == "scream":
    top = rng.integers(0, scream.shape[0] - IMAGE_SIZE + 1)
    left = rng.integers(0, scream.shape[1] - IMAGE_SIZE + 1)
    background = (scream[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
                  + rng.uniform(0.0, 1.0, size=3)) / 2.0
    image = np.where(mask == 1.0, 1.0 - background, background)
  else:
    raise ValueError(f"unknown dSprites domain {look!r}")
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
  import PIL.Image  # pylint: disable=g-import-not-at-top

  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


# ----------------------------------------------------------------------------
# Builders.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class DomainConfig(tfds.core.BuilderConfig):
  """A domain and the size of its subset of the file (`subset_rows`)."""

  max_examples: int = 60_000
  seed: int = 0


class _RegressionArrays(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A regression domain read from an npz: `{'image': 64x64x3, 'label': factors, 'row'}`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  FACTOR_NAMES: tuple[str, ...] = ()
  HOMEPAGE = ""
  FOLDER_NAMES: tuple[str, ...] = ()

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    del skip_corrupt  # arrays are read whole: there is no single image to skip
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.Tensor(shape=(len(self.FACTOR_NAMES),), dtype=np.float32),
            "row": tfds.features.Scalar(dtype=np.int64),  # the example's row in the file
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        # What `tljax.data.registry.open_domain` names the label's factors.
        metadata=tfds.core.MetadataDict(factor_names=list(self.FACTOR_NAMES)),
    )

  def _download_and_prepare(self, *args, **kwargs):
    with deterministic_serialization():
      return super()._download_and_prepare(*args, **kwargs)

  def _find_file(self, dl_manager, files: Sequence[str], layout: str, url: str) -> pathlib.Path:
    root = image_files.find_root(image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
                                 lambda r: all((r / f).is_file() for f in files),
                                 what=f"{self.name} ({self.builder_config.name})",
                                 layout=layout, url=url)
    return root / files[0]


def _domain_configs(names: Sequence[str]) -> list[DomainConfig]:
  return [DomainConfig(name=name, seed=number,
                       description=f"The {name} domain: 60,000 rows, 80% train / 20% test.")
          for number, name in enumerate(names)]


@DATASETS.register("dsprites")
class DSprites(_RegressionArrays, skip_registration=True):
  """dSprites in TLlib's Color, Noisy and Scream domains: regress scale and position."""

  name = "dsprites"
  BUILDER_CONFIGS = _domain_configs(("color", "noisy", "scream"))
  FACTOR_NAMES = DSPRITES_FACTORS
  HOMEPAGE = "https://github.com/deepmind/dsprites-dataset"
  FOLDER_NAMES = ("dsprites", "dSprites", "dsprites-dataset")

  def _split_generators(self, dl_manager):
    look = self.builder_config.name
    files = [DSPRITES_FILE] + ([SCREAM_FILE] if look == "scream" else [])
    layout = DSPRITES_FILE + (f"\n{SCREAM_FILE}  (from {SCREAM_URL})" if look == "scream" else "")
    path = self._find_file(dl_manager, files, layout, DSPRITES_URL)
    scream = load_scream(path.parent / SCREAM_FILE) if look == "scream" else None
    try:
      with np.load(path) as archive:
        latents = np.asarray(archive["latents_values"], np.float64)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as e:
      raise ValueError(f"cannot read latents_values from {path}: {e}; is it the published "
                       f"file ({DSPRITES_URL})?") from e
    shape, _ = npz_array_shape(path, "imgs")
    if shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or latents.shape != (shape[0], 6):
      raise ValueError(f"{path}: imgs {shape} and latents_values {latents.shape}; expected "
                       f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}) and (N, 6)")
    rows = subset_rows(shape[0], self.builder_config.max_examples, self.builder_config.seed)
    return {split: self._generate_examples(path, latents, scream, split, r)
            for split, r in rows.items()}

  def _generate_examples(self, path, latents, scream, split, rows):
    look = self.builder_config.name
    for row, sprite in read_npz_rows(path, "imgs", rows):
      # The look's randomness is the row's own: a row looks the same in any subset.
      rng = np.random.default_rng([self.builder_config.seed, row])
      image = dsprites_look(look, sprite, rng, scream)
      label = latents[row, list(DSPRITES_COLUMNS)].astype(np.float32)
      yield int(row), {"image": _png(image), "label": label, "row": int(row)}


@DATASETS.register("mpi3d")
class MPI3D(_RegressionArrays, skip_registration=True):
  """MPI3D's real, realistic and toy domains: regress the arm's two axes."""

  name = "mpi3d"
  BUILDER_CONFIGS = _domain_configs(("real", "realistic", "toy"))
  FACTOR_NAMES = MPI3D_FACTORS
  HOMEPAGE = "https://github.com/rr-learning/disentanglement_dataset"
  FOLDER_NAMES = ("mpi3d", "MPI3D", "disentanglement_dataset")

  def _split_generators(self, dl_manager):
    file_name = f"mpi3d_{self.builder_config.name}.npz"
    path = self._find_file(dl_manager, [file_name], file_name, MPI3D_URL)
    shape, dtype = npz_array_shape(path, "images")
    total = int(np.prod(MPI3D_SIZES))
    if shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or dtype != np.uint8 or shape[0] > total:
      raise ValueError(f"{path}: images {shape} of {dtype}; expected (N, {IMAGE_SIZE}, "
                       f"{IMAGE_SIZE}, 3) uint8 with N <= {total}, MPI3D's factor grid")
    if shape[0] < total:
      logging.warning("%s holds %d of MPI3D's %d images; factors are read from the row "
                      "numbers of the full grid.", path, shape[0], total)
    rows = subset_rows(shape[0], self.builder_config.max_examples, self.builder_config.seed)
    return {split: self._generate_examples(path, split, r) for split, r in rows.items()}

  def _generate_examples(self, path, split, rows):
    for row, image in read_npz_rows(path, "images", rows):
      factors = np.unravel_index(row, MPI3D_SIZES)
      # TLlib: the two axes (0..39) divided by 39.
      label = np.array([factors[5], factors[6]], np.float32) / np.float32(39.0)
      yield int(row), {"image": _png(np.ascontiguousarray(image)), "label": label,
                       "row": int(row)}
