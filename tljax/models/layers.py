"""Layers shared by every backbone.

`BatchNorm` is flax's BatchNorm plus one piece of data: a regex over the
module's '/'-joined path. Where it matches, the layer normalises with its running
averages even in training and leaves them untouched, which is what fine-tuning
needs for the frozen part of a pretrained network. `train.py` derives the regex
from the frozen parameter groups, so freezing stays data, not code.
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` called with `train`, freezing where `frozen` matches its path.

  Attributes:
    frozen: regex (`re.fullmatch`) over the module path, e.g.
      `backbone/layer1_0/bn1`; empty freezes nothing.
  """

  frozen: str = ""

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # pytype: disable=signature-mismatch
    path = "/".join(self.scope.path)
    is_frozen = bool(self.frozen) and re.fullmatch(self.frozen, path) is not None
    return super().__call__(x, use_running_average=(not train) or is_frozen)


def torch_linear_init(fan_in: int):
  """PyTorch's default `nn.Linear` init, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, for
  kernel and bias: layers TLlib builds without an explicit init start the same here."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jax.numpy.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
