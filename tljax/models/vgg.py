"""VGG-16 backbone in torchvision's layout (no BatchNorm).

Five convolution blocks (`block1` ... `block5`, each 3x3 convolutions + ReLU
then 2x2 max pooling), torchvision's `AdaptiveAvgPool2d((7, 7))`, then the
first two fully connected layers of its classifier, `fc6` and `fc7` (4096, ReLU,
dropout). The feature vector is the output of `fc7`'s dropout, i.e. torchvision's
`classifier[:-1]`; the last layer (`classifier.6`) is the classifier's head.

Blocks are submodules so that freezing by regex works on whole blocks, e.g.
`backbone/block[1-3]/.*`.

torchvision's state-dict keys map as `features.{i}` -> `block{b}/conv{c}` (see
`torchvision_feature_names`), `classifier.0` -> `fc6`, `classifier.3` -> `fc7`.
`fc6`'s input is flattened NHWC here and NCHW in torch; the checkpoint loader
permutes its rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tljax.models import register

# Output channels of each convolution, per block ("configuration D").
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
# Spatial size of torchvision's adaptive pooling before the classifier.
POOLED_SIZE = 7

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.normal(stddev=0.01)


def torchvision_feature_names(blocks: Sequence[Sequence[int]] = VGG16_BLOCKS) -> dict[int, str]:
  """Index in torchvision's `features` Sequential -> `block{b}/conv{c}`.

  Each convolution is followed by a ReLU, and each block ends with a max pool,
  which is how torchvision numbers its `features`.
  """
  names, index = {}, 0
  for block, channels in enumerate(blocks, start=1):
    for conv in range(1, len(channels) + 1):
      names[index] = f"block{block}/conv{conv}"
      index += 2  # conv, relu
    index += 1  # max pool
  return names


def _pooling_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`(out, in)` averaging weights of torch's adaptive pooling along one axis.

  torch averages output cell i over [floor(i*in/out), ceil((i+1)*in/out)).
  """
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
  """torch's `AdaptiveAvgPool2d(out_size)` on NHWC input, for any input size.

  The identity when the map already has the size (224px input to VGG); a
  reshape-and-mean when the size divides evenly; otherwise the exact (possibly
  overlapping or, for small inputs, repeating) torch windows as two averaging
  matrices, since averaging over a rectangle is separable.
  """
  _, height, width, _ = x.shape
  if height == out_size and width == out_size:
    return x
  if height % out_size == 0 and width % out_size == 0:
    batch, _, _, channels = x.shape
    x = x.reshape(batch, out_size, height // out_size, out_size, width // out_size,
                  channels)
    return x.mean(axis=(2, 4))
  rows = jnp.asarray(_pooling_matrix(height, out_size), x.dtype)
  cols = jnp.asarray(_pooling_matrix(width, out_size), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols,
                    precision=jax.lax.Precision.HIGHEST)


class VGGBlock(nn.Module):
  """3x3 convolutions (padding 1) with ReLU, then 2x2 max pooling."""

  channels: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for index, features in enumerate(self.channels, start=1):
      x = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_conv_init,
                  dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{index}")(x)
      x = nn.relu(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
  """VGG trunk up to `fc7`; returns `(B, 4096)` features.

  Attributes:
    blocks: output channels per convolution, per block.
    dropout: dropout after `fc6` and `fc7` in training (torchvision: 0.5).
    dtype: compute dtype (parameters are always fp32).
    frozen_norm: accepted for the backbone interface; VGG-16 has no BatchNorm.
  """

  blocks: Sequence[Sequence[int]] = VGG16_BLOCKS
  dropout: float = 0.5
  dtype: Any = jnp.float32
  frozen_norm: str = ""

  features_dim = 4096

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images
    for index, channels in enumerate(self.blocks, start=1):
      x = VGGBlock(tuple(channels), dtype=self.dtype, name=f"block{index}")(x)
    x = adaptive_avg_pool(x, POOLED_SIZE)
    x = x.reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      x = nn.Dense(4096, kernel_init=_dense_init, dtype=self.dtype,
                   param_dtype=jnp.float32, name=name)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


@register("vgg16")
def vgg16(*, dtype: Any = jnp.float32, frozen_norm: str = "", dropout: float = 0.5) -> VGG:
  return VGG(blocks=VGG16_BLOCKS, dropout=dropout, dtype=dtype, frozen_norm=frozen_norm)
