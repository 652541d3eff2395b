"""Any image PIL opens, as 8-bit RGB: one rule per image mode.

Used where images are checked and stored while a dataset is built
(`image_files.load_checked`) and where examples are decoded for training
(`preprocess.decode_image` and the presets), so that a file means the same
pixels in both places. PIL's own `convert("RGB")` is right for 8-bit modes but
clips wider ones: a 16-bit greyscale PNG becomes almost all white. The rules:

  mode                    RGB value of a sample x
  ----------------------  --------------------------------------------------
  RGB, L                  x (grey repeated into R, G, B)
  1                       0 or 255
  P, PA                   the palette's colour
  RGBA, RGBX, LA          x, the alpha (or padding) channel dropped
  CMYK                    round((255 - C) (255 - K) / 255), PIL's conversion
  I;16, I;16B, I;16L/N    round(x * 255 / 65535): the full 16-bit range
  16-bit RGB/RGBA/LA PNG  the same (PIL reads only the high byte x >> 8, so
                          the low byte is decoded separately)
  I (32-bit integer)      x clipped to [0, 65535], then as I;16
  F (32-bit float)        round(x * 255), x clipped to [0, 1], NaN as 0
  YCbCr, HSV, LAB, RGBa   PIL's conversion

Why these:
  * Alpha is dropped, not composited. torchvision's loader
    (`Image.open(f).convert("RGB")`), which TLlib and most PyTorch training
    code use, drops it too, so a folder trains on the same pixels here as
    there; and compositing would need a background colour that no choice
    makes right for every dataset (black, white and the image's own colour
    under transparent pixels are all common).
  * `I` is what PIL makes of 16-bit PGM/PPM files (and of 16-bit PNGs in
    older versions), so it is read on the 16-bit scale. A 32-bit TIFF with
    values beyond 65535 saturates: scaling each image by its own maximum would
    make the brightness of an image depend on its content.
  * `F` is taken as intensities in [0, 1], the convention of float images in
    scientific tools (e.g. scikit-image), for the same reason: a fixed scale.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image

# Modes whose samples are 16 bits wide.
_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# 16-bit colour PNGs: the rawmode PIL decodes them with (high bytes only) and
# the one that decodes the low bytes of the same samples instead.
_PNG_16_BIT_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
# 16-bit grey-with-alpha PNGs, which PIL opens as RGBA: decoded as 8-bit RGBA,
# the four bytes of a pixel are (L high, L low, A high, A low).
_PNG_16_BIT_LA = "LA;16B"


def _scale_16_bit(values: np.ndarray) -> np.ndarray:
  """16-bit samples (0..65535) -> uint8, `round(x * 255 / 65535)`.

  x / 257 is never halfway between two integers, so integer arithmetic that
  rounds half up is exact.
  """
  values = np.asarray(values).astype(np.int64)
  return ((values * 255 + 65535 // 2) // 65535).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
  """Float samples in [0, 1] -> uint8, `round(x * 255)`, clipped, NaN as 0."""
  values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
  return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray):
  return PIL.Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))


def png_rawmode(image) -> str | None:
  """The rawmode an unloaded PNG will be decoded with (None once loaded, or not a PNG)."""
  if image.format != "PNG" or len(getattr(image, "tile", ())) != 1:
    return None
  args = image.tile[0].args
  return args if isinstance(args, str) else None


def _png_16_bit_rgb(image, encoded: bytes):
  """A 16-bit RGB/RGBA/LA PNG's colour as 16-bit samples (H, W, 3), or None for other images.

  `image` must not be loaded yet: its tile still says how its data is packed.
  PIL's decoding keeps the high byte of each sample; decoding `encoded` a
  second time with another rawmode gets the low bytes.
  """
  rawmode = png_rawmode(image)
  if rawmode not in _PNG_16_BIT_LOW_BYTES and rawmode != _PNG_16_BIT_LA:
    return None
  high = np.asarray(image).astype(np.uint16)  # a corrupt file fails here, as any other
  try:
    other = PIL.Image.open(io.BytesIO(encoded))
    tile = other.tile[0]
    if rawmode == _PNG_16_BIT_LA:
      other.tile = [tile._replace(args="RGBA")]
      packed = np.asarray(other).astype(np.uint16)
      grey = packed[..., 0] << 8 | packed[..., 1]
      return np.repeat(grey[..., None], 3, axis=-1)
    other.tile = [tile._replace(args=_PNG_16_BIT_LOW_BYTES[rawmode])]
    return high[..., :3] << 8 | np.asarray(other)[..., :3].astype(np.uint16)
  except (AttributeError, IndexError, KeyError, ValueError, OSError):
    # A PIL that packs PNGs differently: keep its high byte, which is at most
    # one level below the exact value.
    return high[..., :3] << 8 | high[..., :3]


def to_rgb(image, encoded: bytes | None = None):
  """`image` (a PIL image) as an 8-bit RGB PIL image, by the rule of its mode.

  Args:
    image: a PIL image, opened and not yet loaded for 16-bit colour PNGs to be
      read at full precision (loaded ones give PIL's high byte).
    encoded: the file `image` was opened from, which 16-bit colour PNGs are
      decoded from a second time (without it, PIL's high byte is used).

  Returns:
    `image` itself if it is RGB already, else a new RGB image without
    `image`'s metadata (whose ICC profile or transparency colour would no
    longer describe the pixels).

  Raises:
    ValueError: a mode PIL has no conversion for (e.g. `La`).
  """
  samples = _png_16_bit_rgb(image, encoded) if encoded is not None else None
  if samples is not None:
    return PIL.Image.fromarray(_scale_16_bit(samples))
  if image.mode == "RGB":
    return image
  if image.mode in _16_BIT_MODES:
    return _grey_to_rgb(_scale_16_bit(np.asarray(image)))
  if image.mode == "I":
    return _grey_to_rgb(_scale_16_bit(np.clip(np.asarray(image), 0, 65535)))
  if image.mode == "F":
    return _grey_to_rgb(_scale_float(np.asarray(image)))
  try:
    with warnings.catch_warnings():
      # PIL suggests converting palette images with transparency to RGBA
      # first; the transparency is dropped either way.
      warnings.simplefilter("ignore", UserWarning)
      converted = image.convert("RGB")
  except ValueError as e:
    raise ValueError(f"image mode {image.mode} cannot be converted to RGB ({e})") from e
  converted.info = {}
  return converted
