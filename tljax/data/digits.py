"""The embedded default task: Digits -> Digits-M, built offline as TFDS datasets.

Recipe (deterministic: the same bytes on every build):
1. scikit-learn's 1,797 handwritten digits (`load_digits`, 8x8, ink 0..16) are
   split per class with a fixed seed into two disjoint halves: one half is the
   source domain, the other the target domain, so no underlying digit image is
   seen in both.
2. Every image is upscaled bilinearly to 28x28 and scaled to 0..255.
3. `digits` (source) replicates the grey digit into RGB: white ink on black.
4. `digits_m` (target) blends each digit with a random 28x28 crop of a natural
   colour photograph that scikit-image and scikit-learn ship offline (astronaut,
   coffee, chelsea, rocket, china, flower) as `|crop - digit|`, the blend
   Ganin et al. used to build MNIST-M from BSDS500.
5. Within each domain, 2/3 of every class goes to `train` and 1/3 to `test`.

The builders generate everything from installed packages; `download_and_prepare`
never touches the network.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from tljax.data.serialization import deterministic_serialization

IMAGE_SIZE = 28
NUM_CLASSES = 10
_SPLIT_SEED = 0
_BLEND_SEED = 1
_TRAIN_FRACTION = 2 / 3
_HOMEPAGE = "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"


def _domain_indices(labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """Disjoint, class-stratified source/target halves, each split train/test."""
  rng = np.random.default_rng(_SPLIT_SEED)
  out = {d: {"train": [], "test": []} for d in ("source", "target")}
  for label in range(NUM_CLASSES):
    members = rng.permutation(np.flatnonzero(labels == label))
    half = (len(members) + 1) // 2
    for domain, part in (("source", members[:half]), ("target", members[half:])):
      n_train = int(round(len(part) * _TRAIN_FRACTION))
      out[domain]["train"].append(part[:n_train])
      out[domain]["test"].append(part[n_train:])
  return {d: {s: np.sort(np.concatenate(v)) for s, v in splits.items()}
          for d, splits in out.items()}


def _upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as float images in [0, 1] of shape (N, 28, 28), and labels."""
  import sklearn.datasets  # pylint: disable=g-import-not-at-top
  import skimage.transform  # pylint: disable=g-import-not-at-top

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
  import skimage.data  # pylint: disable=g-import-not-at-top
  import sklearn.datasets  # pylint: disable=g-import-not-at-top

  photos = [getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
  photos += list(sklearn.datasets.load_sample_images().images)
  return [np.asarray(p[..., :3], dtype=np.uint8) for p in photos]


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.round(image * 255.0).astype(np.uint8)


class _DigitsBase(tfds.core.GeneratorBasedBuilder):
  """Shared features and splits of the two digit domains."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  _DOMAIN = ""

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
    indices = _domain_indices(labels)[self._DOMAIN]
    return {split: self._generate_examples(images, labels, idx)
            for split, idx in indices.items()}

  def _render(self, images: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
    raise NotImplementedError

  def _generate_examples(self, images, labels, indices):
    rendered = self._render(images, indices)
    for index, image in zip(indices, rendered):
      yield int(index), {"image": image, "label": int(labels[index]),
                         "digit_index": int(index)}


class Digits(_DigitsBase):
  """Source domain: scikit-learn's handwritten digits, 28x28 RGB."""

  _DOMAIN = "source"

  def _render(self, images, indices):
    return [np.repeat(_to_uint8(images[i])[..., None], 3, axis=-1) for i in indices]


class DigitsM(_DigitsBase):
  """Target domain: the other half of the digits blended with photo crops (MNIST-M style)."""

  _DOMAIN = "target"

  def _render(self, images, indices):
    backgrounds = _backgrounds()
    rng = np.random.default_rng(_BLEND_SEED)
    rendered = []
    for i in indices:
      photo = backgrounds[rng.integers(len(backgrounds))]
      top = rng.integers(photo.shape[0] - IMAGE_SIZE + 1)
      left = rng.integers(photo.shape[1] - IMAGE_SIZE + 1)
      crop = photo[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE].astype(np.float64)
      digit = images[i][..., None] * 255.0
      rendered.append(np.round(np.abs(crop - digit)).astype(np.uint8))
    return rendered
