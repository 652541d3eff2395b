"""scikit-learn's handwritten digits as TFDS datasets, built offline.

Two uses of the same 1,797 digits:
- the embedded default task Digits -> Digits-M: the digits split into two
  disjoint halves, one per domain (`digits`, `digits_m`, ~900 images each);
- the real targets of the synthetic -> real task that starts from
  `synth_digits` (`tljax.data.synth_digits`): every digit, in one domain
  (`digits_full`, `digits_m_full`), so that accuracy on all 1,797 (TFDS's
  split `all`) has a standard error near one point.

Recipe (deterministic: the same bytes on every build):
1. scikit-learn's 1,797 handwritten digits (`load_digits`, 8x8, ink 0..16).
   For `digits` / `digits_m` they are split per class with a fixed seed into
   two disjoint halves: one half is the source domain, the other the target
   domain, so no underlying digit image is seen in both.
2. Every image is upscaled bilinearly to 28x28 and scaled to 0..255.
3. `digits` and `digits_full` replicate the grey digit into RGB: white ink on
   black.
4. `digits_m` and `digits_m_full` blend each digit with a random 28x28 crop of
   a natural colour photograph that scikit-image and scikit-learn ship offline
   (astronaut, coffee, chelsea, rocket, china, flower) as `|crop - digit|`, the
   blend Ganin et al. used to build MNIST-M from BSDS500.
5. Within each domain, 2/3 of every class goes to `train` and 1/3 to `test`
   (TFDS's `all` reads both). In `digits_m_full` each digit's crop is drawn in
   digit order over all 1,797, so a digit looks the same in every split.

`digits_full` holds the digits of both `digits` and `digits_m`: do not pair
it with either. The builders generate everything from installed packages;
`download_and_prepare` never touches the network.
"""

from __future__ import annotations

import numpy as np
import skimage.data
import skimage.transform
import sklearn.datasets
import tensorflow_datasets as tfds

from tljax.data.registry import DATASETS
from tljax.data.serialization import deterministic_serialization

IMAGE_SIZE = 28
NUM_CLASSES = 10
_SPLIT_SEED = 0
_BLEND_SEED = 1
_FULL_SPLIT_SEED = 3
_TRAIN_FRACTION = 2 / 3
_HOMEPAGE = "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"


def _train_test(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The first 2/3 (rounded) of a class's shuffled members, and the rest."""
  n_train = int(round(len(members) * _TRAIN_FRACTION))
  return members[:n_train], members[n_train:]


def _domain_indices(labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """Disjoint, class-stratified source/target halves, each split train/test."""
  rng = np.random.default_rng(_SPLIT_SEED)
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


def _full_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Every digit, split train/test per class."""
  rng = np.random.default_rng(_FULL_SPLIT_SEED)
  out = {"train": [], "test": []}
  for label in range(NUM_CLASSES):
    train, test = _train_test(rng.permutation(np.flatnonzero(labels == label)))
    out["train"].append(train)
    out["test"].append(test)
  return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def _upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as float images in [0, 1] of shape (N, 28, 28), and labels."""
  digits = sklearn.datasets.load_digits()
  images = digits.images.astype(np.float64) / 16.0
  upscaled = np.stack([
      skimage.transform.resize(img, (IMAGE_SIZE, IMAGE_SIZE), order=1,
                               anti_aliasing=False, mode="edge")
      for img in images
  ])
  return np.clip(upscaled, 0.0, 1.0), digits.target.astype(np.int64)


def _backgrounds() -> list[np.ndarray]:
  """Natural colour photographs shipped with scikit-image and scikit-learn."""
  photos = [getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
  photos += list(sklearn.datasets.load_sample_images().images)
  return [np.asarray(p[..., :3], dtype=np.uint8) for p in photos]


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.round(image * 255.0).astype(np.uint8)


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
  """(N, H, W) floats in [0, 1] -> (N, H, W, 3) uint8: white ink on black."""
  return np.repeat(_to_uint8(images)[..., None], 3, axis=-1)


def blend_with_photos(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """(N, H, W) floats in [0, 1] -> (N, H, W, 3) uint8 `|crop - 255 digit|`.

  MNIST-M's blend (Ganin et al., 2016): for each digit in turn, a photograph
  of `_backgrounds()` and a crop position in it are drawn from `rng`.
  """
  backgrounds = _backgrounds()
  size_y, size_x = images.shape[1:3]
  rendered = []
  for image in images:
    photo = backgrounds[rng.integers(len(backgrounds))]
    top = rng.integers(photo.shape[0] - size_y + 1)
    left = rng.integers(photo.shape[1] - size_x + 1)
    crop = photo[top:top + size_y, left:left + size_x].astype(np.float64)
    rendered.append(np.round(np.abs(crop - image[..., None] * 255.0)).astype(np.uint8))
  return np.stack(rendered)


class _DigitsBase(tfds.core.GeneratorBasedBuilder):
  """Features shared by the datasets of scikit-learn's digits; subclasses pick splits and look."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    del skip_corrupt  # the images are generated: there is no unreadable file to skip
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "digit_index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage=_HOMEPAGE,
    )

  def _download_and_prepare(self, *args, **kwargs):
    with deterministic_serialization():
      return super()._download_and_prepare(*args, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from installed packages
    images, labels = _upscaled_digits()
    return {split: self._generate_examples(images, labels, idx)
            for split, idx in self._split_indices(labels).items()}

  def _split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Split name -> sorted indices of the digits in it."""
    raise NotImplementedError

  def _render(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The RGB uint8 images of the digits `indices`, in that order."""
    raise NotImplementedError

  def _generate_examples(self, images, labels, indices):
    rendered = self._render(images, indices)
    for index, image in zip(indices, rendered):
      yield int(index), {"image": image, "label": int(labels[index]),
                         "digit_index": int(index)}


@DATASETS.register("digits")
class Digits(_DigitsBase):
  """Source domain: scikit-learn's handwritten digits, 28x28 RGB."""

  def _split_indices(self, labels):
    return _domain_indices(labels)["source"]

  def _render(self, images, indices):
    return grey_to_rgb(images[indices])


@DATASETS.register("digits_m")
class DigitsM(_DigitsBase):
  """Target domain: the other half of the digits blended with photo crops (MNIST-M style)."""

  def _split_indices(self, labels):
    return _domain_indices(labels)["target"]

  def _render(self, images, indices):
    return blend_with_photos(images[indices], np.random.default_rng(_BLEND_SEED))


@DATASETS.register("digits_full")
class DigitsFull(Digits):
  """All 1,797 digits, white on black: a real-handwriting target for `synth_digits`."""

  def _split_indices(self, labels):
    return _full_indices(labels)


@DATASETS.register("digits_m_full")
class DigitsMFull(DigitsM):
  """All 1,797 digits blended with photo crops (MNIST-M style)."""

  def _split_indices(self, labels):
    return _full_indices(labels)

  def _render(self, images, indices):
    # Crops drawn over all digits in their order, whatever the split, so that
    # `train` and `test` hold exactly the images of `all`.
    return blend_with_photos(images, np.random.default_rng(_BLEND_SEED))[indices]
