"""Per-example preprocessing, chosen by name in the config.

A preprocessing function maps an example `{'image', 'label'}` and a
`numpy.random.Generator` (seeded by grain from the pipeline seed and the
example's position in the stream, so augmentation is reproducible and
independent of the number of processes) to `{'image': float32 HWC, 'label'}`, the
label an int32 class, or a float32 vector of factors (regression, `label_array`).
Every preset takes the image as a uint8 HWC array or as the encoded file that
builders of image-file datasets store; a file is decoded to 8-bit RGB by the
rules of `tljax.data.image_modes`, the ones it was checked with when stored.

Datasets of large images of any size (Office-31, VisDA, DomainNet, custom
folders) hand the image over still encoded (JPEG/PNG bytes). The ImageNet-style
presets below decode it themselves because that is where the time goes: they
work out the crop first, let the JPEG decoder scale down by 2, 4 or 8 while
decoding when the crop is that much larger than the output (PIL's `draft`),
and resample only the crop, once, straight to the output size.

Presets: `none`, `digits` (at the stored size), `digits28` / `digits32` (small
digit datasets resized, grey made RGB; `digits_resized` takes any size),
`imagenet_train` / `imagenet_eval` (TLlib's 224-px recipe, ImageNet
mean/std), `vit_train` / `vit_eval` (the same, scaled to [-1, 1]), and the
strong augmentations of FixMatch-style methods: `digits_strong` (numpy
RandAugment-like affine, brightness/contrast and cutout for small digits) and
`imagenet_strong` (`imagenet_train` followed by timm's RandAugment
`rand-m10-n2-mstd2`, TLlib's FixMatch). Sizes and the rest are keyword
arguments, e.g. `{"name": "imagenet_train", "crop": "random"}`.
"""

from __future__ import annotations

import functools
import inspect
import io
import math
from typing import Any, Callable, Mapping

import numpy as np
import PIL.Image
from PIL import ImageEnhance, ImageOps

from tljax.data import image_modes

Example = dict[str, Any]
PreprocessFn = Callable[[Example, np.random.Generator], Example]

_PREPROCESS: dict[str, Callable[..., PreprocessFn]] = {}


def register(name: str):
  def wrap(factory):
    _PREPROCESS[name] = factory
    return factory
  return wrap


def get_preprocess(name: str, **kwargs) -> PreprocessFn:
  if name not in _PREPROCESS:
    raise ValueError(f"unknown preprocessing {name!r}; choose one of {sorted(_PREPROCESS)}")
  try:
    return _PREPROCESS[name](**kwargs)
  except TypeError as e:
    accepted = sorted(inspect.signature(_PREPROCESS[name]).parameters)
    raise ValueError(f"preprocessing {name!r} takes {accepted}, not {sorted(kwargs)}") from e


def from_config(preprocess_config: Mapping[str, Any], image_size: int | None = None) -> PreprocessFn:
  """The preset a config names (`{'name': ..., **kwargs}`), with `size` set to
  `image_size` (`config.data.image_size`) when the preset takes a size and the
  config does not give one: the one place a run's resolution is set."""
  kwargs = dict(preprocess_config)
  name = kwargs.pop("name")
  if name not in _PREPROCESS:
    raise ValueError(f"unknown preprocessing {name!r}; choose one of {sorted(_PREPROCESS)}")
  if (image_size and "size" not in kwargs
      and "size" in inspect.signature(_PREPROCESS[name]).parameters):
    kwargs["size"] = image_size
  return get_preprocess(name, **kwargs)


def label_array(label) -> np.ndarray:
  """A label as the pipeline batches it: an int32 class, or a float32 vector of
  regression factors (no preset changes a label)."""
  label = np.asarray(label)
  return label.astype(np.float32) if label.dtype.kind == "f" else np.int32(label)


def _output(image: np.ndarray, label) -> Example:
  return {"image": image.astype(np.float32), "label": label_array(label)}


@register("none")
def none() -> PreprocessFn:
  """Inputs used as they are (e.g. cached feature vectors), cast to float32.

  Encoded images are decoded (RGB, 0..255, at their stored size).
  """

  def fn(example: Example, rng: np.random.Generator) -> Example:
    del rng
    return _output(_array(example["image"]), example["label"])

  return fn


@register("digits")
def digits(mean: float = 0.5, std: float = 0.5, random_shift: int = 0) -> PreprocessFn:
  """Scale to [0, 1] and normalise (TLlib's digits: mean = std = 0.5).

  The image keeps its stored size (and channels, for arrays; encoded files
  become RGB), so every image of a domain must have the same size; for
  domains of images of any size (`image_folder:PATH`), `digits_resized`
  brings them to one.

  Args:
    mean: normalisation mean.
    std: normalisation standard deviation.
    random_shift: if > 0, pad by this many pixels (edge) and crop back at a
      random offset, a light augmentation for small images.
  """

  def fn(example: Example, rng: np.random.Generator) -> Example:
    image = _array(example["image"])
    if random_shift:
      h, w = image.shape[:2]
      padded = np.pad(image, ((random_shift,) * 2, (random_shift,) * 2, (0, 0)), mode="edge")
      top, left = rng.integers(0, 2 * random_shift + 1, size=2)
      image = padded[top:top + h, left:left + w]
    return _output((image / 255.0 - mean) / std, example["label"])

  return fn


# ----------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_encoded(image) -> bool:
  return isinstance(image, (bytes, bytearray, memoryview))


def _pil_image(image, *, draft_for=None):
  """An RGB PIL image of an encoded file or an (H, W[, C]) array.

  Args:
    image: JPEG/PNG/... bytes, or an array (uint8, or a dtype PIL has a mode
      for, e.g. uint16 or float32 grey).
    draft_for: for JPEG bytes, a function `(width, height) -> (box, size)`
      giving the region that will be resampled and its output size, so that
      the decoder can scale down by 2, 4 or 8 on the way.

  Returns:
    `(image, box)`: the image converted by `image_modes.to_rgb` and the region
    in its pixel coordinates (None without `draft_for`).
  """
  encoded = None
  if _is_encoded(image):
    encoded = bytes(image)
    pil = PIL.Image.open(io.BytesIO(encoded))
  else:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    pil = PIL.Image.fromarray(array)
  box = None
  if draft_for is not None:
    width, height = pil.size
    box, (out_w, out_h) = draft_for(width, height)
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    scale = 1.0
    if pil.format in ("JPEG", "MPO") and box_w >= 2 * out_w and box_h >= 2 * out_h:
      request = (math.ceil(width * out_w / box_w), math.ceil(height * out_h / box_h))
      drafted = pil.draft("RGB", request)
      if drafted is not None:
        scale = width / drafted[1][2]
    box = tuple(c / scale for c in box)
  return image_modes.to_rgb(pil, encoded), box


def decode_image(image) -> np.ndarray:
  """An example's image (encoded bytes or an array, grey or colour) as uint8 (H, W, 3) RGB."""
  pil, _ = _pil_image(image)
  return np.asarray(pil)


def _array(image) -> np.ndarray:
  """An example's image as an array: encoded files decoded to RGB, arrays as they are."""
  return decode_image(image) if _is_encoded(image) else np.asarray(image)


def _normaliser(mean, std):
  """uint8 (H, W, C) -> float32 `(x / 255 - mean) / std` per channel.

  A 256-entry table per channel: looking values up is twice as fast as
  converting and scaling, which matters at 150k values per 224-px image.
  """
  mean = np.broadcast_to(np.asarray(mean, np.float64), (3,))
  std = np.broadcast_to(np.asarray(std, np.float64), (3,))
  tables = ((np.arange(256)[None, :] / 255.0 - mean[:, None]) / std[:, None]).astype(np.float32)

  def normalise(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, np.float32)
    for channel in range(array.shape[-1]):
      np.take(tables[channel], array[..., channel], out=out[..., channel])
    return out

  return normalise


# ----------------------------------------------------------------------------
# Crops in the resized frame, as TLlib's transforms take them.
# ----------------------------------------------------------------------------


def _resized_frame(width: int, height: int, resize: int | None, resize_mode: str):
  """Size of the image after the first resize, which is never computed, only mapped."""
  if resize is None:
    return width, height
  if resize_mode == "square":  # TLlib's ResizeImage: (resize, resize), aspect not kept
    return resize, resize
  if resize_mode == "shorter_side":  # torchvision's Resize(int)
    if width <= height:
      return resize, int(resize * height / width)
    return int(resize * width / height), resize
  raise ValueError(f"resize_mode must be 'square' or 'shorter_side', not {resize_mode!r}")


def _random_resized_crop(rng: np.random.Generator, width: int, height: int,
                         scale: tuple[float, float], ratio: tuple[float, float]):
  """torchvision's RandomResizedCrop box `(left, top, w, h)`: area fraction in `scale`,
  aspect ratio log-uniform in `ratio`, ten tries, then a centre crop."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _random_crop(rng: np.random.Generator, width: int, height: int, size: int):
  w, h = min(size, width), min(size, height)
  top = int(rng.integers(0, height - h + 1))
  left = int(rng.integers(0, width - w + 1))
  return left, top, w, h


def _centre_crop(width: int, height: int, size: int):
  w, h = min(size, width), min(size, height)
  return int(round((width - w) / 2)), int(round((height - h) / 2)), w, h


def _crop_and_resize(image, size: int, resize: int | None, resize_mode: str, crop_in_frame):
  """Decodes `image` and returns the crop `crop_in_frame(frame_w, frame_h)` (chosen in the
  resized frame) resampled to `size` x `size`, as a uint8 RGB array."""
  def draft_for(width, height):
    frame_w, frame_h = _resized_frame(width, height, resize, resize_mode)
    left, top, w, h = crop_in_frame(frame_w, frame_h)
    fx, fy = width / frame_w, height / frame_h
    return (left * fx, top * fy, (left + w) * fx, (top + h) * fy), (size, size)

  pil, box = _pil_image(image, draft_for=draft_for)
  return np.asarray(pil.resize((size, size), PIL.Image.Resampling.BILINEAR, box=box))


# ----------------------------------------------------------------------------
# Presets.
# ----------------------------------------------------------------------------


def _resize_for(size: int, resize: int | str | None) -> int | None:
  """TLlib's resize-then-crop ratio (256 for 224) at any output size."""
  if resize == "auto":
    return round(size * 256 / 224)
  if isinstance(resize, str):
    raise ValueError(f"resize must be a size, 'auto' or None, not {resize!r}")
  return resize


@register("imagenet_train")
def imagenet_train(size: int = 224, resize: int | str | None = "auto", resize_mode: str = "square",
                   crop: str = "random_resized", scale: tuple[float, float] = (0.08, 1.0),
                   ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD) -> PreprocessFn:
  """TLlib's training transform: resize, random (resized) crop, flip, normalise.

  Args:
    size: output side.
    resize: side of the first resize: "auto" is `round(size * 256 / 224)` (256
      at TLlib's 224 px), None crops the image as it is.
    resize_mode: "square" (TLlib's ResizeImage, to resize x resize) or
      "shorter_side" (torchvision's Resize).
    crop: "random_resized" (TLlib's default: RandomResizedCrop(size, scale,
      ratio)) or "random" (TLlib's 'ran.crop': RandomCrop(size)).
    scale: area fraction range of the random resized crop.
    ratio: aspect ratio range of the random resized crop.
    flip: random horizontal flip with probability 0.5.
    mean: per-channel normalisation mean (of x / 255).
    std: per-channel normalisation standard deviation.
  """
  normalise = _normaliser(mean, std)
  crop_and_flip = _train_crop(size, resize, resize_mode, crop, scale, ratio, flip)

  def fn(example: Example, rng: np.random.Generator) -> Example:
    return {"image": normalise(crop_and_flip(example["image"], rng)),
            "label": label_array(example["label"])}

  return fn


def _train_crop(size, resize, resize_mode, crop, scale, ratio, flip):
  """`(image, rng) -> uint8 pixels`: `imagenet_train`'s crop and flip."""
  if crop not in ("random_resized", "random"):
    raise ValueError(f"crop must be 'random_resized' or 'random', not {crop!r}")
  scale, ratio = tuple(scale), tuple(ratio)
  resize = _resize_for(size, resize)

  def pixels_of(image, rng: np.random.Generator) -> np.ndarray:
    if crop == "random_resized":
      crop_in_frame = lambda w, h: _random_resized_crop(rng, w, h, scale, ratio)
    else:
      crop_in_frame = lambda w, h: _random_crop(rng, w, h, size)
    pixels = _crop_and_resize(image, size, resize, resize_mode, crop_in_frame)
    if flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return pixels

  return pixels_of


@register("imagenet_eval")
def imagenet_eval(size: int = 224, resize: int | str | None = "auto", resize_mode: str = "square",
                  mean=IMAGENET_MEAN, std=IMAGENET_STD) -> PreprocessFn:
  """TLlib's evaluation transform: resize, centre crop, normalise (arguments: `imagenet_train`)."""
  resize = _resize_for(size, resize)
  normalise = _normaliser(mean, std)

  def fn(example: Example, rng: np.random.Generator) -> Example:
    del rng  # deterministic
    pixels = _crop_and_resize(example["image"], size, resize, resize_mode,
                              lambda w, h: _centre_crop(w, h, size))
    return {"image": normalise(pixels), "label": label_array(example["label"])}

  return fn


# ViTs (big_vision / timm AugReg checkpoints) expect inputs in [-1, 1].
register("vit_train")(functools.partial(imagenet_train, mean=(0.5,) * 3, std=(0.5,) * 3))
register("vit_eval")(functools.partial(imagenet_eval, mean=(0.5,) * 3, std=(0.5,) * 3))


@register("digits_resized")
def digits_resized(size: int = 32, channels: int = 3, mean: float = 0.5, std: float = 0.5,
                   random_shift: int = 0) -> PreprocessFn:
  """Small digit images (MNIST, USPS, SVHN, MNIST-M) at one size and channel count.

  Args:
    size: output side (bilinear resize when the image has another size).
    channels: 3 (grey repeated into RGB) or 1 (colour converted to grey).
    mean: normalisation mean (of x / 255).
    std: normalisation standard deviation.
    random_shift: if > 0, a random translation by up to this many pixels
      (edge padding), after resizing.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, not {channels}")
  shift = digits(mean=mean, std=std, random_shift=random_shift)

  def fn(example: Example, rng: np.random.Generator) -> Example:
    pil, _ = _pil_image(example["image"])
    if channels == 1:
      pil = pil.convert("L")
    if pil.size != (size, size):
      pil = pil.resize((size, size), PIL.Image.Resampling.BILINEAR)
    pixels = np.asarray(pil).reshape(size, size, channels)
    return shift({"image": pixels, "label": example["label"]}, rng)

  return fn


register("digits28")(functools.partial(digits_resized, size=28))
register("digits32")(functools.partial(digits_resized, size=32))


# ----------------------------------------------------------------------------
# Strong augmentations (FixMatch's second view).
# ----------------------------------------------------------------------------

DIGITS_STRONG_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "scale",
                     "brightness", "contrast")


def _affine_warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """`image` (H, W, C) resampled bilinearly at `matrix @ (x, y, 1)` for every output
  pixel `(x, y)`; coordinates outside the image take the nearest edge pixel."""
  h, w = image.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  src_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
  src_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
  x0 = np.floor(src_x)
  y0 = np.floor(src_y)
  fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
  x0c, x1c = np.clip(x0, 0, w - 1).astype(int), np.clip(x0 + 1, 0, w - 1).astype(int)
  y0c, y1c = np.clip(y0, 0, h - 1).astype(int), np.clip(y0 + 1, 0, h - 1).astype(int)
  top = image[y0c, x0c] * (1 - fx) + image[y0c, x1c] * fx
  bottom = image[y1c, x0c] * (1 - fx) + image[y1c, x1c] * fx
  return top * (1 - fy) + bottom * fy


@register("digits_strong")
def digits_strong(num_ops: int = 2, rotate: float = 30.0, shear: float = 0.3,
                  translate: float = 0.3, scale: float = 0.3, brightness: float = 0.9,
                  contrast: float = 0.9, cutout: float = 0.5, mean: float = 0.5,
                  std: float = 0.5) -> PreprocessFn:
  """A RandAugment-like strong augmentation for small digit images, in numpy.

  As RandAugment, `num_ops` operations are drawn (with replacement) from
  `DIGITS_STRONG_OPS`, each with a strength drawn uniformly in [0, 1] (as
  FixMatch's RandAugment) times its maximum below and a random sign; then, as
  FixMatch's, a grey square of side `cutout` x the image side is cut out at a
  random place. The geometric operations compose into one affine map about
  the image centre, resampled once (bilinear, edge pixels outside); the
  photometric ones act on 0..255 values as PIL's `ImageEnhance` (brightness:
  `x f`; contrast: `mean + f (x - mean)`, `f` in `1 +- max`). Then the image
  is normalised as `digits`. Everything random comes from the generator given.

  Args:
    num_ops: operations per image.
    rotate: largest rotation, degrees.
    shear: largest shear factor.
    translate: largest shift, as a fraction of the side.
    scale: largest zoom `1 +- scale`.
    brightness: largest brightness change of the factor `1 +- brightness`.
    contrast: largest contrast change of the factor `1 +- contrast`.
    cutout: side of the cut-out square as a fraction of the image side (0: none).
    mean: normalisation mean.
    std: normalisation standard deviation.
  """

  def fn(example: Example, rng: np.random.Generator) -> Example:
    image = _array(example["image"]).astype(np.float64)
    if image.ndim == 2:
      image = image[..., None]
    h, w = image.shape[:2]
    ops = rng.choice(len(DIGITS_STRONG_OPS), size=num_ops, replace=True)
    forward = np.eye(3)  # output <- input, about the centre
    factors = []
    for op in (DIGITS_STRONG_OPS[i] for i in ops):
      strength = rng.uniform() * (1.0 if rng.uniform() < 0.5 else -1.0)
      step = np.eye(3)
      if op == "rotate":
        angle = math.radians(rotate * strength)
        step[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
      elif op == "shear_x":
        step[0, 1] = shear * strength
      elif op == "shear_y":
        step[1, 0] = shear * strength
      elif op == "translate_x":
        step[0, 2] = translate * strength * w
      elif op == "translate_y":
        step[1, 2] = translate * strength * h
      elif op == "scale":
        step[0, 0] = step[1, 1] = 1.0 + scale * strength
      else:
        factors.append((op, 1.0 + (brightness if op == "brightness" else contrast) * strength))
        continue
      forward = step @ forward
    if not np.allclose(forward, np.eye(3)):
      centre = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]])
      uncentre = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]])
      image = _affine_warp(image, np.linalg.inv(centre @ forward @ uncentre))
    for op, factor in factors:
      if op == "brightness":
        image = image * factor
      else:
        grey = image.mean()
        image = grey + factor * (image - grey)
      image = np.clip(image, 0.0, 255.0)
    if cutout > 0:
      side = max(1, int(round(cutout * min(h, w))))
      cy, cx = rng.integers(0, h), rng.integers(0, w)
      y0, x0 = max(cy - side // 2, 0), max(cx - side // 2, 0)
      image[y0:y0 + side, x0:x0 + side] = 127.5
    return _output((image / 255.0 - mean) / std, example["label"])

  return fn


# timm's RandAugment operations ('rand-*' policies), in its order.
RAND_AUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                    "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX",
                    "ShearY", "TranslateXRel", "TranslateYRel")


def rand_augment_op(pil, op: str, level: float, *, negate: bool, fill: tuple[int, int, int],
                    translate_pct: float = 0.45):
  """One of timm's RandAugment operations at `level` in [0, 1] (magnitude / 10),
  with its arguments mapped as timm's `LEVEL_TO_ARG` (rotation up to 30
  degrees, shear 0.3, translation `translate_pct` of the side, enhancement
  factors 0.1..1.9, posterize to 0..4 bits, solarize threshold 0..256,
  solarize-add 0..110); `negate` flips the sign of the geometric ones.
  Bilinear resampling, `fill` outside the image."""

  bilinear = PIL.Image.Resampling.BILINEAR
  sign = -1.0 if negate else 1.0

  def affine(coefficients):
    return pil.transform(pil.size, PIL.Image.Transform.AFFINE, coefficients, resample=bilinear,
                         fillcolor=fill)

  if op == "AutoContrast":
    return ImageOps.autocontrast(pil)
  if op == "Equalize":
    return ImageOps.equalize(pil)
  if op == "Invert":
    return ImageOps.invert(pil)
  if op == "Rotate":
    return pil.rotate(sign * level * 30.0, resample=bilinear, fillcolor=fill)
  if op == "Posterize":
    return ImageOps.posterize(pil, int(level * 4))
  if op == "Solarize":
    return ImageOps.solarize(pil, min(256, int(level * 256)))
  if op == "SolarizeAdd":
    add = min(128, int(level * 110))
    table = [min(255, i + add) if i < 128 else i for i in range(256)]
    return pil.point(table * len(pil.getbands()))
  if op in ("Color", "Contrast", "Brightness", "Sharpness"):
    return getattr(ImageEnhance, op)(pil).enhance(level * 1.8 + 0.1)
  if op == "ShearX":
    return affine((1, sign * level * 0.3, 0, 0, 1, 0))
  if op == "ShearY":
    return affine((1, 0, 0, sign * level * 0.3, 1, 0))
  if op == "TranslateXRel":
    return affine((1, 0, sign * level * translate_pct * pil.size[0], 0, 1, 0))
  if op == "TranslateYRel":
    return affine((1, 0, 0, 0, 1, sign * level * translate_pct * pil.size[1]))
  raise ValueError(f"unknown RandAugment operation {op!r}; choose from {RAND_AUGMENT_OPS}")


_SIGNED_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def rand_augment(pil, rng: np.random.Generator, *, num_ops: int, magnitude: float,
                 magnitude_std: float, prob: float, fill: tuple[int, int, int]):
  """timm's `RandAugment` (the 'rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}'
  policy, TLlib's FixMatch) on an RGB PIL image, drawing from `rng`.

  `num_ops` operations are drawn with replacement from `RAND_AUGMENT_OPS`;
  each applies with probability `prob`, at a magnitude drawn from
  `N(magnitude, magnitude_std)` clipped to [0, 10] (`rand_augment_op`), the
  geometric ones with a random sign.
  """
  for op in (RAND_AUGMENT_OPS[i] for i in rng.choice(len(RAND_AUGMENT_OPS), size=num_ops)):
    if prob < 1.0 and rng.random() > prob:
      continue
    level = magnitude if magnitude_std <= 0 else rng.normal(magnitude, magnitude_std)
    level = min(max(level, 0.0), 10.0) / 10.0
    negate = op in _SIGNED_OPS and rng.random() > 0.5
    pil = rand_augment_op(pil, op, level, negate=negate, fill=fill)
  return pil


@register("imagenet_strong")
def imagenet_strong(size: int = 224, resize: int | str | None = "auto", resize_mode: str = "square",
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                    num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 2.0,
                    prob: float = 0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> PreprocessFn:
  """TLlib's FixMatch strong view: `imagenet_train`'s random resized crop and flip,
  then RandAugment `rand-m10-n2-mstd2` (`rand_augment`) before normalising.

  TLlib builds it with timm's `rand_augment_transform` (fill: the ImageNet mean
  in 0..255, bilinear resampling, as here). Differences: the random numbers
  come from the example's numpy generator (reproducible per seed and stream
  position) instead of Python's and numpy's global generators, and the
  crop's arguments are `imagenet_train`'s (TLlib's FixMatch passes scale
  (0.5, 1) for both target views: `configs/fixmatch.py` sets it).

  Args:
    size, resize, resize_mode, scale, ratio, flip, mean, std: as `imagenet_train`.
    num_ops: RandAugment operations per image (`n`).
    magnitude: their magnitude, 0..10 (`m`).
    magnitude_std: standard deviation of the magnitude per operation (`mstd`).
    prob: probability of applying each drawn operation (timm's 0.5).
  """
  crop_and_flip = _train_crop(size, resize, resize_mode, "random_resized", scale, ratio, flip)
  normalise = _normaliser(mean, std)
  fill = tuple(min(255, round(255 * m)) for m in mean)

  def fn(example: Example, rng: np.random.Generator) -> Example:
    pixels = np.ascontiguousarray(crop_and_flip(example["image"], rng))
    pil = rand_augment(PIL.Image.fromarray(pixels), rng, num_ops=num_ops, magnitude=magnitude,
                       magnitude_std=magnitude_std, prob=prob, fill=fill)
    return {"image": normalise(np.asarray(pil)), "label": label_array(example["label"])}

  return fn


def multi_view(views: dict[str, PreprocessFn]) -> PreprocessFn:
  """Several preprocessed views of each example, e.g. FixMatch's weak (`image`)
  and strong (`image_strong`) augmentations of one target image.

  Each view draws from its own generator, spawned from the example's, so the
  views differ from one another and are reproducible.
  """
  if "image" not in views:
    raise ValueError("multi_view needs an 'image' view")
  names = sorted(views)

  def fn(example: Example, rng: np.random.Generator) -> Example:
    out = {}
    for name, view_rng in zip(names, rng.spawn(len(names))):
      processed = views[name](example, view_rng)
      out[name] = processed["image"]
      out.setdefault("label", processed["label"])
    return out

  return fn
