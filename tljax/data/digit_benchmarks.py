"""MNIST, USPS, SVHN and MNIST-M, built from their usual distribution files.

    config.source = "mnist"      # 28x28 grey, train 60,000 / test 10,000
    config.source = "usps"       # 16x16 grey, train 7,291 / test 2,007
    config.source = "svhn"       # 32x32 RGB, train 73,257 / test 26,032 (/ extra)
    config.source = "mnist_m"    # 28x28 RGB, train 59,001 / test 9,001

TFDS's `mnist` and `svhn_cropped` download; these read the files the user
has, in `config.manual_dir` or its folder named after the dataset:

    mnist:   train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
             t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]
             (also in torchvision's MNIST/raw/)
    usps:    usps.h5 (groups train/test with data, target), or the LIBSVM
             files usps.bz2 and usps.t.bz2 (or uncompressed usps, usps.t)
    svhn:    train_32x32.mat, test_32x32.mat [, extra_32x32.mat]
    mnist_m: mnist_m_train/*.png with mnist_m_train_labels.txt, and
             mnist_m_test/*.png with mnist_m_test_labels.txt

Images keep their own size and channels (grey stays grey); the `digits28` /
`digits32` preprocessing resizes and makes them RGB so that any two of these
(and `digits`, `digits_m`) form a task. All name their classes "0".."9", and
SVHN's label 10 for the digit 0 becomes 0.
"""

from __future__ import annotations

import bz2
import gzip
import io
import pathlib
import struct
from typing import Sequence

import numpy as np
import PIL.Image
import scipy.io
import tensorflow_datasets as tfds

from tljax.data import image_files
from tljax.data.registry import DATASETS

DIGIT_CLASSES = tuple(str(d) for d in range(10))

MNIST_URL = ("http://yann.lecun.com/exdb/mnist/ (mirror: "
             "https://ossci-datasets.s3.amazonaws.com/mnist/)")
USPS_URL = ("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps "
            "(usps.bz2, usps.t.bz2) or https://www.kaggle.com/datasets/bistaumanga/usps-dataset "
            "(usps.h5)")
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/ (format 2: train_32x32.mat, test_32x32.mat)"
MNIST_M_URL = ("http://yaroslav.ganin.net/ (mnist_m.tar.gz, from Ganin & Lempitsky's "
               "domain-adversarial training)")


class _DigitArrays(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A digit dataset read into arrays: `{'image': (H, W, C) uint8, 'label'}`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  IMAGE_SHAPE: tuple[int, int, int] = (28, 28, 1)
  HOMEPAGE = ""
  FOLDER_NAMES: tuple[str, ...] = ()

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    del skip_corrupt  # array files are read whole: there is no single image to skip
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(names=list(DIGIT_CLASSES)),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  def _find_root(self, dl_manager, required: Sequence[Sequence[str]], layout: str, url: str):
    """The root holding, for each group of alternatives in `required`, one of its files."""
    return image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: all(any((r / f).is_file() for f in group) for group in required),
        what=self.name, layout=layout, url=url)

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    if images.shape[1:] != self.IMAGE_SHAPE:
      raise ValueError(f"{self.name}: images of shape {images.shape[1:]}, expected "
                       f"{self.IMAGE_SHAPE}")
    if len(images) != len(labels) or labels.min() < 0 or labels.max() > 9:
      raise ValueError(f"{self.name}: {len(images)} images with {len(labels)} labels in "
                       f"[{labels.min()}, {labels.max()}]; expected one digit 0..9 per image")
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": _png(image), "label": int(label)}


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 (H, W, C) array; encoded here, TFDS would load TensorFlow to do it."""
  out = io.BytesIO()
  PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG")
  return out.getvalue()


def _first_existing(root: pathlib.Path, names: Sequence[str]) -> pathlib.Path:
  return next(root / n for n in names if (root / n).is_file())


def _corrupt(path: pathlib.Path, error: Exception) -> ValueError:
  return ValueError(f"cannot read {path}: {type(error).__name__}: {error}; the file is damaged "
                    "or incomplete, download it again")


def read_idx(path: pathlib.Path) -> np.ndarray:
  """An IDX file (MNIST's format), gzipped or not, as an array."""
  try:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
      data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
      raise ValueError(f"not an IDX file of uint8 (header {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
      raise ValueError(f"{values.size} values for shape {shape}")
  except (OSError, EOFError, ValueError, struct.error) as e:
    raise _corrupt(path, e) from e
  return values.reshape(shape)


@DATASETS.register("mnist")
class MNIST(_DigitArrays, skip_registration=True):
  """MNIST handwritten digits, from the IDX files."""

  name = "mnist"
  IMAGE_SHAPE = (28, 28, 1)
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
  FOLDER_NAMES = ("mnist", "MNIST", "MNIST/raw", "mnist/MNIST/raw")
  _FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

  def _split_generators(self, dl_manager):
    names = [n for pair in self._FILES.values() for n in pair]
    root = self._find_root(dl_manager, [(n, n + ".gz") for n in names],
                           layout="\n".join(n + "[.gz]" for n in names), url=MNIST_URL)
    splits = {}
    for split, (images, labels) in self._FILES.items():
      images = read_idx(_first_existing(root, (images + ".gz", images)))
      labels = read_idx(_first_existing(root, (labels + ".gz", labels)))
      splits[split] = self._generate_examples(images[..., None], labels.astype(np.int64))
    return splits


def read_libsvm_usps(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """USPS in LIBSVM format (`label index:value ...`, labels 1..10, values in [-1, 1])."""
  try:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as f:
      lines = [line.split() for line in f if line.strip()]
    labels = np.asarray([int(float(fields[0])) - 1 for fields in lines], np.int64)
    # Absent features are 0 in LIBSVM's sparse format, i.e. mid-grey here.
    values = np.zeros((len(lines), 256), np.float64)
    for row, fields in enumerate(lines):
      for item in fields[1:]:
        index, value = item.split(":")
        values[row, int(index) - 1] = float(value)
  except (OSError, EOFError, ValueError, IndexError) as e:
    raise _corrupt(path, e) from e
  images = image_files.images_to_uint8((values + 1.0) * 127.5)
  return images.reshape(-1, 16, 16, 1), labels


def read_h5_usps(path: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """USPS from `usps.h5` (values in [0, 1])."""
  # h5py is optional (not a dependency of tljax): only this copy of USPS needs it.
  import h5py  # pylint: disable=g-import-not-at-top

  try:
    with h5py.File(path, "r") as f:
      data, target = f[split]["data"][:], f[split]["target"][:]
  except (OSError, KeyError) as e:
    raise _corrupt(path, e) from e
  images = image_files.images_to_uint8(np.asarray(data, np.float64) * 255.0)
  return images.reshape(-1, 16, 16, 1), np.asarray(target, np.int64)


@DATASETS.register("usps")
class USPS(_DigitArrays, skip_registration=True):
  """USPS handwritten digits, 16x16, from usps.h5 or the LIBSVM files."""

  name = "usps"
  IMAGE_SHAPE = (16, 16, 1)
  HOMEPAGE = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps"
  FOLDER_NAMES = ("usps", "USPS")
  _LIBSVM = {"train": ("usps.bz2", "usps"), "test": ("usps.t.bz2", "usps.t")}

  def _split_generators(self, dl_manager):
    manual_dir = image_files.manual_dir_of(dl_manager)
    has_h5 = lambda r: (r / "usps.h5").is_file()
    has_libsvm = lambda r: all(any((r / f).is_file() for f in names)
                               for names in self._LIBSVM.values())
    root = image_files.find_root(
        manual_dir, self.FOLDER_NAMES, lambda r: has_h5(r) or has_libsvm(r), what="usps",
        layout="usps.h5\nusps.bz2 and usps.t.bz2  (or, instead of usps.h5, LIBSVM's files)",
        url=USPS_URL)
    splits = {}
    for split, names in self._LIBSVM.items():
      if has_h5(root):
        images, labels = read_h5_usps(root / "usps.h5", split)
      else:
        images, labels = read_libsvm_usps(_first_existing(root, names))
      splits[split] = self._generate_examples(images, labels)
    return splits


@DATASETS.register("svhn")
class SVHN(_DigitArrays, skip_registration=True):
  """SVHN cropped digits (format 2), 32x32 RGB, from the .mat files."""

  name = "svhn"
  IMAGE_SHAPE = (32, 32, 3)
  HOMEPAGE = "http://ufldl.stanford.edu/housenumbers/"
  FOLDER_NAMES = ("svhn", "SVHN")

  def _split_generators(self, dl_manager):
    root = self._find_root(dl_manager, [("train_32x32.mat",), ("test_32x32.mat",)],
                           layout="train_32x32.mat\ntest_32x32.mat\nextra_32x32.mat  (optional)",
                           url=SVHN_URL)
    splits = {}
    for split in ("train", "test", "extra"):
      path = root / f"{split}_32x32.mat"
      if not path.is_file():
        continue
      try:
        mat = scipy.io.loadmat(path)
        images, labels = np.transpose(mat["X"], (3, 0, 1, 2)), mat["y"].reshape(-1)
      except (OSError, ValueError, KeyError) as e:
        raise _corrupt(path, e) from e
      # SVHN numbers the digit 0 as class 10.
      labels = np.where(labels == 10, 0, labels).astype(np.int64)
      splits[split] = self._generate_examples(np.ascontiguousarray(images, np.uint8), labels)
    return splits


@DATASETS.register("mnist_m")
class MNISTM(image_files.ImageFileBuilder, skip_registration=True):
  """MNIST-M: MNIST digits blended with BSDS500 photo patches, 28x28 RGB PNGs."""

  name = "mnist_m"
  CLASS_NAMES = DIGIT_CLASSES
  IMAGE_SHAPE = (28, 28, 3)
  HOMEPAGE = "http://yaroslav.ganin.net/"
  DESCRIPTION = "MNIST-M (Ganin & Lempitsky, 2015)."
  FOLDER_NAMES = ("mnist_m", "mnistm", "MNIST-M", "MNIST_M")

  def _split_generators(self, dl_manager):
    layout = ("mnist_m_train/*.png\nmnist_m_train_labels.txt  ('00000000.png 5' per line)\n"
              "mnist_m_test/*.png\nmnist_m_test_labels.txt")
    root = image_files.find_root(
        image_files.manual_dir_of(dl_manager), self.FOLDER_NAMES,
        lambda r: all((r / f"mnist_m_{s}_labels.txt").is_file() for s in ("train", "test")),
        what="mnist_m", layout=layout, url=MNIST_M_URL)
    splits = {}
    for split in ("train", "test"):
      list_file = root / f"mnist_m_{split}_labels.txt"
      entries = []
      for number, name, label in image_files.read_list(list_file):
        if not 0 <= label <= 9:
          raise ValueError(f"{list_file}:{number}: label {label} is not a digit")
        entries.append(image_files.Entry(key=f"{number:08d} {name}", label=label,
                                         path=str(root / f"mnist_m_{split}" / name),
                                         file_name=f"mnist_m_{split}/{name}"))
      splits[split] = self._generate_examples(entries)
    return splits
