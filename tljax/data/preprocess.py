"""Per-example preprocessing, chosen by name in the config.

A preprocessing function maps an example `{'image': uint8 HWC, 'label'}` and a
`numpy.random.Generator` (seeded by grain from the pipeline seed and the
example's position in the stream, so augmentation is reproducible and
independent of the number of processes) to `{'image': float32 HWC, 'label': int32}`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

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
  return _PREPROCESS[name](**kwargs)


def _output(image: np.ndarray, label) -> Example:
  return {"image": image.astype(np.float32), "label": np.int32(label)}


@register("digits")
def digits(mean: float = 0.5, std: float = 0.5, random_shift: int = 0) -> PreprocessFn:
  """Scale to [0, 1] and normalise (TLlib's digits: mean = std = 0.5).

  Args:
    mean: normalisation mean.
    std: normalisation standard deviation.
    random_shift: if > 0, pad by this many pixels (edge) and crop back at a
      random offset, a light augmentation for small images.
  """

  def fn(example: Example, rng: np.random.Generator) -> Example:
    image = example["image"]
    if random_shift:
      h, w = image.shape[:2]
      padded = np.pad(image, ((random_shift,) * 2, (random_shift,) * 2, (0, 0)), mode="edge")
      top, left = rng.integers(0, 2 * random_shift + 1, size=2)
      image = padded[top:top + h, left:left + w]
    return _output((image / 255.0 - mean) / std, example["label"])

  return fn
