"""`identity`: a backbone that passes its (flattened) input through.

For heads trained on cached features (`configs/linear_probe.py`): the
"images" are then feature vectors, and the classifier is bottleneck + head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from tljax.models import register


class Identity(nn.Module):
  frozen_norm: str = ""
  dtype: Any = None

  def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
    del train
    return inputs.reshape(inputs.shape[0], -1)


@register("identity")
def identity(**kwargs) -> Identity:
  return Identity(**kwargs)
