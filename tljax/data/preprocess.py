"""Per-example preprocessing, chosen by name in the config.

A preprocessing function maps an example `{'image', 'label'}` and a
`numpy.random.Generator` (seeded by grain from the pipeline seed and the
example's position in the stream, so augmentation is reproducible and
independent of the number of processes) to `{'image': float32 HWC, 'label': int32}`.
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
mean/std), `vit_train` / `vit_eval` (the same, scaled to [-1, 1]). Sizes and
the rest are keyword arguments, e.g. `{"name": "imagenet_train", "crop": "random"}`.
"""

from __future__ import annotations

import functools
import inspect
import io
import math
from typing import Any, Callable, Mapping

import numpy as np

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


def _output(image: np.ndarray, label) -> Example:
  return {"image": image.astype(np.float32), "label": np.int32(label)}


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
  import PIL.Image  # pylint: disable=g-import-not-at-top

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
  import PIL.Image  # pylint: disable=g-import-not-at-top

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
  if crop not in ("random_resized", "random"):
    raise ValueError(f"crop must be 'random_resized' or 'random', not {crop!r}")
  resize = _resize_for(size, resize)
  normalise = _normaliser(mean, std)
  scale, ratio = tuple(scale), tuple(ratio)

  def fn(example: Example, rng: np.random.Generator) -> Example:
    if crop == "random_resized":
      crop_in_frame = lambda w, h: _random_resized_crop(rng, w, h, scale, ratio)
    else:
      crop_in_frame = lambda w, h: _random_crop(rng, w, h, size)
    pixels = _crop_and_resize(example["image"], size, resize, resize_mode, crop_in_frame)
    if flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return {"image": normalise(pixels), "label": np.int32(example["label"])}

  return fn


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
    return {"image": normalise(pixels), "label": np.int32(example["label"])}

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
  import PIL.Image  # pylint: disable=g-import-not-at-top

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
