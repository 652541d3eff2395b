"""Synthetic digits rendered from fonts: the source of a synthetic -> real task.

    config.source = "synth_digits"      # 28x28 RGB, train 20,000 / test 2,000
    config.target = "digits_full"       # scikit-learn's 1,797 handwritten digits
    config.target = "digits_m_full"     # the same, blended with photo crops

The pattern of SynDigits -> SVHN (Ganin & Lempitsky, 2015) and VisDA's
synthetic -> real, built offline: the target has thousands of images, so one
run's accuracy is measured to about a point (the 298 test images of `digits_m`
give a standard error near 3 points). The targets are in `tljax.data.digits`.

Recipe of example k of a split (a pure function of the seed, the split and k,
so a smaller config's examples are the first ones of a larger config's):
1. The label is k mod 10 (every class within one example of exact balance),
   the font number (k div 10) mod (number of fonts), so every font draws every
   digit equally often (within one).
2. Fonts: every TrueType file matplotlib ships that holds the digits 0-9
   (`digit_fonts`, sorted by file name).
3. The glyph is drawn with a random stroke width (PIL's `stroke_width`, up to
   `_MAX_STROKE` of the font size, from light to heavy strokes) and cropped to
   its ink. It is then scaled to a random height of the frame and a random
   width-to-height factor, rotated, sheared and shifted at random, all in one
   affine map, at `_SUPERSAMPLE` times the final size, then box-filtered down
   to 28x28 and blurred a little (anti-aliased strokes, as in a scan).
4. The ink coverage m mixes a random background colour b and a random
   foreground colour f whose luma (ITU-R BT.601) differs from b's by at least
   `_MIN_CONTRAST`: image = b (1 - m) + f m + noise, with Gaussian pixel noise
   of a random standard deviation up to `_MAX_NOISE`, rounded to uint8.

Rendering uses FreeType through PIL with the basic layout engine, so the bytes
are the same on every build with the same matplotlib, Pillow and FreeType.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

from fontTools import ttLib
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
import scipy.ndimage
import tensorflow_datasets as tfds

from tljax.data.digits import IMAGE_SIZE
from tljax.data.digits import NUM_CLASSES
from tljax.data.registry import DATASETS
from tljax.data.serialization import deterministic_serialization

_SEED = 2
_SPLIT_NUMBERS = {"train": 0, "test": 1}

_FONT_SIZE = 96  # pixels; glyphs are rendered large, then mapped down
_SUPERSAMPLE = 4  # the affine map draws at 4x the final size, then a 4x4 box filter
_MAX_STROKE = 0.06  # of the font size: 0 keeps the font's own weight
_HEIGHT = (0.55, 0.95)  # glyph height, as a fraction of the frame
_ASPECT = (0.75, 1.25)  # extra horizontal scale
_MAX_ROTATION = 15.0  # degrees
_MAX_SHEAR = 0.25  # x shift per unit of y
_MAX_SHIFT = 0.12  # of the frame, each axis
_MAX_BLUR = 0.8  # Gaussian standard deviation, final pixels
_MIN_CONTRAST = 80.0  # luma difference of foreground and background, 0..255
_MAX_NOISE = 10.0  # Gaussian noise standard deviation, 0..255

_DIGIT_GLYPHS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_HOMEPAGE = "https://matplotlib.org/stable/users/explain/text/fonts.html"


def digit_fonts() -> tuple[str, ...]:
  """The TrueType files matplotlib ships that draw the ten digits, sorted.

  A font is kept when its character map sends '0'..'9' to glyphs named after
  the digits ('zero'..'nine', 'zerooldstyle' for cmmi10's old-style figures).
  That leaves out, on matplotlib 3.x:
  - cmsy10 and cmex10: TeX symbol fonts whose '0'..'9' code points hold other
    glyphs (prime, infinity, ...; pieces of large delimiters);
  - LastResortHE: draws every character as the same box naming its block;
  - DejaVu*Display, STIXNonUni*, STIXSiz*: fragments (display sizes, non-Unicode
    variants, large operators) that map no digits at all.
  """
  font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
  fonts = []
  for name in sorted(os.listdir(font_dir)):
    if not name.endswith(".ttf"):
      continue
    cmap = ttLib.TTFont(os.path.join(font_dir, name), lazy=True).getBestCmap() or {}
    glyphs = [cmap.get(ord(str(d)), "") for d in range(NUM_CLASSES)]
    if all(g.startswith(d) for g, d in zip(glyphs, _DIGIT_GLYPHS)):
      fonts.append(os.path.join(font_dir, name))
  return tuple(fonts)


@functools.lru_cache(maxsize=None)
def _load_font(path: str):
  # The basic engine, not Raqm: whether Raqm is installed would otherwise
  # decide the layout, and so the bytes.
  return ImageFont.truetype(path, _FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)


def _glyph(font_path: str, digit: int, stroke: int) -> np.ndarray:
  """The digit's ink as floats in [0, 1], cropped to its bounding box."""
  font = _load_font(font_path)
  left, top, right, bottom = font.getbbox(str(digit), stroke_width=stroke)
  canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
  ImageDraw.Draw(canvas).text((1 - left, 1 - top), str(digit), fill=255, font=font,
                              stroke_width=stroke, stroke_fill=255)
  ink = np.asarray(canvas)
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32) / 255.0


def _luma(rgb: np.ndarray) -> float:
  return float(rgb @ np.array([0.299, 0.587, 0.114]))


def render(fonts: tuple[str, ...], split: str, k: int) -> tuple[np.ndarray, int, int]:
  """Example k of a split: (28x28x3 uint8 image, label, index into `fonts`)."""
  label = k % NUM_CLASSES
  font_index = (k // NUM_CLASSES) % len(fonts)
  rng = np.random.default_rng([_SEED, _SPLIT_NUMBERS[split], k])
  stroke = int(rng.integers(0, round(_MAX_STROKE * _FONT_SIZE) + 1))
  ink = _glyph(fonts[font_index], label, stroke)

  # Output pixel (x, y) of the supersampled frame, centred at c + shift, reads
  # glyph pixel A^-1 (x - c - shift) + glyph centre, where A = rotation @ shear
  # @ scale; PIL's affine transform takes that inverse map.
  big = IMAGE_SIZE * _SUPERSAMPLE
  height = rng.uniform(*_HEIGHT) * big
  scale_y = height / ink.shape[0]
  scale_x = scale_y * rng.uniform(*_ASPECT)
  angle = math.radians(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
  shear = rng.uniform(-_MAX_SHEAR, _MAX_SHEAR)
  shift = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=2) * big
  rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale_x, scale_y])
  inverse = np.linalg.inv(forward)
  glyph_centre = np.array([ink.shape[1], ink.shape[0]]) / 2.0
  offset = glyph_centre - inverse @ (np.array([big, big]) / 2.0 + shift)
  coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
  glyph = Image.fromarray(ink)  # float32: mode "F"
  warped = glyph.transform((big, big), Image.Transform.AFFINE, coefficients,
                           resample=Image.Resampling.BILINEAR)
  small = warped.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
  blur = rng.uniform(0.0, _MAX_BLUR)
  coverage = np.clip(scipy.ndimage.gaussian_filter(np.asarray(small, np.float64), blur), 0.0, 1.0)
  coverage = coverage[..., None]

  background = rng.uniform(0.0, 255.0, size=3)
  foreground = rng.uniform(0.0, 255.0, size=3)
  while abs(_luma(foreground) - _luma(background)) < _MIN_CONTRAST:
    foreground = rng.uniform(0.0, 255.0, size=3)
  image = background * (1.0 - coverage) + foreground * coverage
  image += rng.normal(0.0, rng.uniform(0.0, _MAX_NOISE), size=image.shape)
  return np.round(np.clip(image, 0.0, 255.0)).astype(np.uint8), label, font_index


@dataclasses.dataclass
class SynthDigitsConfig(tfds.core.BuilderConfig):
  """How many examples each split renders."""

  num_train: int = 20_000
  num_test: int = 2_000


@DATASETS.register("synth_digits")
class SynthDigits(tfds.core.GeneratorBasedBuilder):
  """Digits 0-9 rendered from matplotlib's fonts with random geometry and colour."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SynthDigitsConfig(name="full", description="20,000 train / 2,000 test."),
      # For tests and quick looks: the first examples of `full`'s splits.
      SynthDigitsConfig(name="small", description="1,000 train / 200 test.",
                        num_train=1_000, num_test=200),
  ]

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    del skip_corrupt  # the images are generated: there is no unreadable file to skip
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "font": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=_HOMEPAGE,
    )

  def _download_and_prepare(self, *args, **kwargs):
    with deterministic_serialization():
      return super()._download_and_prepare(*args, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything comes from installed packages
    sizes = {"train": self.builder_config.num_train, "test": self.builder_config.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    fonts = digit_fonts()
    for k in range(num_examples):
      image, label, font_index = render(fonts, split, k)
      yield k, {"image": image, "label": label, "font": os.path.basename(fonts[font_index])}
