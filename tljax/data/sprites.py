"""Sprites: an embedded dSprites-like regression dataset, built offline.

    config.source = "sprites/color"     # 32x32 RGB, train 6,000 / test 1,000
    config.target = "sprites/noisy"     # predict (scale, position x, position y)

The regression task of TLlib's `examples/domain_adaptation/image_regression`
(dSprites' Color, Noisy and Scream domains) at a size a CPU trains in
minutes: a white square, ellipse or heart at a random scale, orientation and
position, drawn in one of four looks (the builder configs):

| config | look | after |
|---|---|---|
| `binary` | white on black | dSprites itself |
| `color` | the shape in a random colour, each channel U(0.5, 1), on black | `color_dsprites` |
| `noisy` | white over uniform noise, `min(shape + noise, 1)` | `noisy_dsprites` |
| `photo` | over a crop of a photograph, colour-shifted, the shape's pixels inverted | `scream_dsprites` |

(the right column names disentanglement_lib's transformations, which the
dSprites domains of TLlib and of the RSD paper follow; `photo` uses the
photographs Digits-M uses, `tljax.data.digits`, in place of Munch's The
Scream, which no installed package ships). The label is `(scale, position
x, position y)` in dSprites' ranges (its `latents_values`): scale in [0.5, 1],
positions in [0, 1], so all lie in [0, 1], where TLlib's regression heads
(a sigmoid output) predict. Mean absolute error over the three is the
task's measure, as in TLlib's tables.

Recipe of example k of a split of a domain (a pure function of the domain,
the split and k, so a `_small` config's examples are the first ones of the
full config's, and no sprite is drawn twice across domains or splits):
1. Shape (uniform of three), scale U(0.5, 1), orientation U(0, 2 pi),
   position x and y U(0, 1), drawn in that order.
2. The shape, of half-size `_HALF_SIZE * scale` frames, rotated by the
   orientation and centred at `_MARGIN + position * (1 - 2 _MARGIN)` frames
   (x to the right, y downwards, as rows), is sampled at `_SUPERSAMPLE`^2
   points per pixel: the coverage m in [0, 1] of each pixel.
3. The look of the domain, drawn from the same generator after the factors.
Rendering is numpy arithmetic on fixed grids (and PIL's box resize of the
photographs), so every build writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from tljax.data import digits
from tljax.data.registry import DATASETS
from tljax.data.serialization import deterministic_serialization

IMAGE_SIZE = 32
SHAPES = ("square", "ellipse", "heart")
# TLlib's names of dSprites' factors (`tllib.vision.datasets.regression.DSprites`).
FACTOR_NAMES = ("scale", "position x", "position y")
LOOKS = ("binary", "color", "noisy", "photo")

_SEED = 5
_SPLIT_NUMBERS = {"train": 0, "test": 1}
_SCALE_RANGE = (0.5, 1.0)  # dSprites' scales
_HALF_SIZE = 0.16  # of the frame: half the side of a square at scale 1
_MARGIN = 0.2  # of the frame: where positions 0 and 1 put the centre
_SUPERSAMPLE = 4
_PHOTO_SIDE = 4 * IMAGE_SIZE  # photographs are shrunk to this shorter side, then cropped
_HOMEPAGE = "https://github.com/deepmind/dsprites-dataset"


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether object coordinates `(u, v)` (half-size 1, v downwards) fall in the shape."""
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0
  if shape == "ellipse":
    return u**2 + (v / 0.5)**2 <= 1.0  # dSprites' ellipse: twice as wide as high
  # The heart (a^2 + b^2 - 1)^3 <= a^2 b^3 spans a in [-1.14, 1.14] and b in
  # [-1, 1.24]; b points up, so that the tip is at the bottom at orientation 0.
  a, b = 1.15 * u, -1.15 * v + 0.12
  return (a**2 + b**2 - 1.0)**3 - a**2 * b**3 <= 0.0


@functools.lru_cache(maxsize=None)
def _subpixel_grid() -> tuple[np.ndarray, np.ndarray]:
  """`(x, y)` of the supersampled points, in frames (0..1), each `(H S, W S)`."""
  centres = (np.arange(IMAGE_SIZE * _SUPERSAMPLE) + 0.5) / (IMAGE_SIZE * _SUPERSAMPLE)
  x, y = np.meshgrid(centres, centres)
  return x, y


def coverage(shape: str, scale: float, orientation: float, position_x: float,
             position_y: float) -> np.ndarray:
  """`(H, W)` fraction of each pixel the sprite covers (step 2 of the recipe)."""
  x, y = _subpixel_grid()
  centre_x = _MARGIN + position_x * (1.0 - 2.0 * _MARGIN)
  centre_y = _MARGIN + position_y * (1.0 - 2.0 * _MARGIN)
  half = _HALF_SIZE * scale
  dx, dy = x - centre_x, y - centre_y
  cos, sin = np.cos(orientation), np.sin(orientation)
  # Rotating the points by -orientation is rotating the shape by +orientation.
  u = (cos * dx + sin * dy) / half
  v = (-sin * dx + cos * dy) / half
  inside = _inside(shape, u, v).astype(np.float64)
  s = _SUPERSAMPLE
  return inside.reshape(IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(1, 3))


@functools.lru_cache(maxsize=None)
def _photos() -> tuple[np.ndarray, ...]:
  """Digits-M's photographs as floats in [0, 1], shrunk (box filter) to a shorter side of
  `_PHOTO_SIDE`, so that a crop holds texture rather than one flat patch."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  shrunk = []
  for photo in digits._backgrounds():  # pylint: disable=protected-access
    height, width = photo.shape[:2]
    factor = _PHOTO_SIDE / min(height, width)
    size = (max(_PHOTO_SIDE, round(width * factor)), max(_PHOTO_SIDE, round(height * factor)))
    small = Image.fromarray(photo).resize(size, Image.Resampling.BOX)
    shrunk.append(np.asarray(small, np.float64) / 255.0)
  return tuple(shrunk)


def _look(look: str, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """`(H, W, 3)` floats in [0, 1]: coverage `mask` drawn in `look` (step 3)."""
  m = mask[..., None]
  if look == "binary":
    return np.repeat(m, 3, axis=-1)
  if look == "color":
    return m * rng.uniform(0.5, 1.0, size=3)
  if look == "noisy":
    return np.minimum(m + rng.uniform(0.0, 1.0, size=(*mask.shape, 3)), 1.0)
  if look == "photo":
    photos = _photos()
    photo = photos[rng.integers(len(photos))]
    top = rng.integers(photo.shape[0] - IMAGE_SIZE + 1)
    left = rng.integers(photo.shape[1] - IMAGE_SIZE + 1)
    background = (photo[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
                  + rng.uniform(0.0, 1.0, size=3)) / 2.0
    return background * (1.0 - m) + (1.0 - background) * m
  raise ValueError(f"unknown look {look!r}; choose one of {LOOKS}")


def render(look: str, split: str, k: int) -> tuple[np.ndarray, np.ndarray, int, float]:
  """Example k of a split of domain `look`: (32x32x3 uint8 image, float32
  `(scale, position x, position y)`, shape index, orientation in radians)."""
  rng = np.random.default_rng([_SEED, LOOKS.index(look), _SPLIT_NUMBERS[split], k])
  shape = int(rng.integers(len(SHAPES)))
  scale = rng.uniform(*_SCALE_RANGE)
  orientation = rng.uniform(0.0, 2.0 * np.pi)
  position_x, position_y = rng.uniform(0.0, 1.0, size=2)
  mask = coverage(SHAPES[shape], scale, orientation, position_x, position_y)
  image = np.round(np.clip(_look(look, mask, rng), 0.0, 1.0) * 255.0).astype(np.uint8)
  factors = np.array([scale, position_x, position_y], np.float32)
  return image, factors, shape, float(orientation)


@dataclasses.dataclass
class SpritesConfig(tfds.core.BuilderConfig):
  """One domain (`look`) and how many examples each split renders."""

  look: str = "binary"
  num_train: int = 6_000
  num_test: int = 1_000


def _configs() -> list[SpritesConfig]:
  configs = []
  for look in LOOKS:
    configs.append(SpritesConfig(name=look, look=look,
                                 description=f"{look}: 6,000 train / 1,000 test."))
    # For tests and quick looks: the first examples of the full config's splits.
    configs.append(SpritesConfig(name=f"{look}_small", look=look, num_train=400, num_test=200,
                                 description=f"{look}: 400 train / 200 test."))
  return configs


@DATASETS.register("sprites")
class Sprites(tfds.core.GeneratorBasedBuilder):
  """Shapes at a random scale, orientation and position; regress scale and position."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _configs()

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    del skip_corrupt  # the images are generated: there is no unreadable file to skip
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.Tensor(shape=(len(FACTOR_NAMES),), dtype=np.float32),
            "shape": tfds.features.ClassLabel(names=SHAPES),
            "orientation": tfds.features.Scalar(dtype=np.float32),
        }),
        supervised_keys=("image", "label"),
        homepage=_HOMEPAGE,
        # What `tljax.data.registry.open_domain` names the label's factors.
        metadata=tfds.core.MetadataDict(factor_names=list(FACTOR_NAMES)),
    )

  def _download_and_prepare(self, *args, **kwargs):
    with deterministic_serialization():
      return super()._download_and_prepare(*args, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is drawn from numpy and installed photographs
    sizes = {"train": self.builder_config.num_train, "test": self.builder_config.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    for k in range(num_examples):
      image, factors, shape, orientation = render(self.builder_config.look, split, k)
      yield k, {"image": image, "label": factors, "shape": shape,
                "orientation": np.float32(orientation)}
