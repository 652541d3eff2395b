"""ResNet-18/34/50/101/152 backbones in torchvision's layout.

The layout is torchvision's ResNet v1.5 (stride on the 3x3 convolution of a
bottleneck), so that ImageNet weights from torchvision or timm load one to one
through `tljax.models.checkpoints`. Module names follow the state-dict keys:
`layer1.0.conv1` becomes `layer1_0/conv1`, `layer1.0.downsample.0` becomes
`layer1_0/downsample_conv` and `layer1.0.downsample.1` `layer1_0/downsample_bn`.

Images are NHWC; the output is the globally average-pooled feature vector
(512 for ResNet-18/34, 2048 for the bottleneck ResNets), i.e. torchvision's
network without `fc`. The classifier's head replaces `fc`.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models import register
from tljax.models.layers import BatchNorm

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pointwise_conv_as_dot(inputs: jax.Array, kernel: jax.Array, window_strides: Sequence[int],
                          padding: Any, *, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count: int = 1,
                          precision=None) -> jax.Array:
  """`lax.conv_general_dilated` for `nn.Conv`, with 1x1 kernels as matmuls.

  A 1x1 convolution (stride s, no padding) is `inputs[:, ::s, ::s] @ kernel`,
  the same sums. Written as a dot, its gradients are dots too; as a convolution,
  XLA:CPU expresses the kernel gradient as a convolution over the batch axis
  and transposes both activations and gradients into that layout first. On a
  CPU that cut the ResNet-50 train step's compute time by about a quarter
  (see `tljax.models.bench`). Other kernels go to `lax.conv_general_dilated`.
  """
  pointwise = (kernel.shape[:2] == (1, 1) and feature_group_count == 1
               and not isinstance(padding, str)
               and all(tuple(pad) == (0, 0) for pad in padding)
               and all(d == 1 for d in (lhs_dilation or (1, 1)))
               and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not pointwise:
    return jax.lax.conv_general_dilated(
        inputs, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  stride_h, stride_w = window_strides
  if (stride_h, stride_w) != (1, 1):
    inputs = inputs[:, ::stride_h, ::stride_w, :]
  return jax.lax.dot_general(inputs, kernel[0, 0], (((3,), (0,)), ((), ())),
                             precision=precision)


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free convolution with torch's symmetric `padding=kernel // 2`.

  Explicit padding rather than "SAME": for stride 2 on an even input, "SAME"
  pads only on the bottom/right, which would shift every feature map by one
  pixel relative to the torch network whose weights we load.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32,
                 conv_general_dilated=pointwise_conv_as_dot, name=name)


def _batch_norm(frozen_norm: str, dtype: Any, name: str) -> BatchNorm:
  # torch's momentum 0.1 weights the new batch; flax's weights the old average.
  return BatchNorm(frozen=frozen_norm, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  Attributes:
    planes: channels of the convolutions (output channels = planes).
    strides: stride of the first convolution and of the shortcut.
    frozen_norm: regex of BatchNorm paths that keep running statistics.
    dtype: compute dtype.
  """

  expansion: ClassVar[int] = 1
  planes: int
  strides: int = 1
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(_batch_norm, self.frozen_norm, self.dtype)
    shortcut = x
    y = _conv(self.planes, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(norm("bn1")(y, train))
    y = _conv(self.planes, 3, 1, self.dtype, "conv2")(y)
    y = norm("bn2")(y, train)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      shortcut = _conv(self.planes * self.expansion, 1, self.strides, self.dtype,
                       "downsample_conv")(x)
      shortcut = norm("downsample_bn")(shortcut, train)
    return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand, residual (ResNet-50+).

  Attributes:
    planes: channels of the inner convolutions; the output has 4x as many.
    strides: stride of the 3x3 convolution and of the shortcut.
    frozen_norm: regex of BatchNorm paths that keep running statistics.
    dtype: compute dtype.
  """

  expansion: ClassVar[int] = 4
  planes: int
  strides: int = 1
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(_batch_norm, self.frozen_norm, self.dtype)
    shortcut = x
    y = _conv(self.planes, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(norm("bn1")(y, train))
    y = _conv(self.planes, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(norm("bn2")(y, train))
    y = _conv(self.planes * self.expansion, 1, 1, self.dtype, "conv3")(y)
    y = norm("bn3")(y, train)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      shortcut = _conv(self.planes * self.expansion, 1, self.strides, self.dtype,
                       "downsample_conv")(x)
      shortcut = norm("downsample_bn")(shortcut, train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet trunk: stem, four stages, global average pooling.

  Attributes:
    block: `BasicBlock` or `BottleneckBlock`.
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    frozen_norm: regex of BatchNorm paths (e.g. `backbone/.*`) that normalise
      with their running statistics even when `train=True`.
    dtype: compute dtype (parameters are always fp32).
  """

  block: type[nn.Module]
  stage_sizes: Sequence[int]
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @property
  def features_dim(self) -> int:
    return 512 * self.block.expansion

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Maps `(B, H, W, 3)` images to `(B, features_dim)` pooled features."""
    x = _conv(64, 7, 2, self.dtype, "conv1")(images)
    x = nn.relu(_batch_norm(self.frozen_norm, self.dtype, "bn1")(x, train))
    # Padding for max pooling is -inf in flax, as in torch.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        x = self.block(
            planes=64 * 2**stage,
            strides=2 if stage > 0 and index == 0 else 1,
            frozen_norm=self.frozen_norm,
            dtype=self.dtype,
            name=f"layer{stage + 1}_{index}",
        )(x, train)
    # Pool in fp32 so that bf16 runs do not lose precision in the sum.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)


def _factory(block: type[nn.Module], stage_sizes: Sequence[int]):

  def create(*, dtype: Any = jnp.float32, frozen_norm: str = "") -> ResNet:
    return ResNet(block=block, stage_sizes=tuple(stage_sizes),
                  frozen_norm=frozen_norm, dtype=dtype)

  return create


resnet18 = register("resnet18")(_factory(BasicBlock, (2, 2, 2, 2)))
resnet34 = register("resnet34")(_factory(BasicBlock, (3, 4, 6, 3)))
resnet50 = register("resnet50")(_factory(BottleneckBlock, (3, 4, 6, 3)))
resnet101 = register("resnet101")(_factory(BottleneckBlock, (3, 4, 23, 3)))
resnet152 = register("resnet152")(_factory(BottleneckBlock, (3, 8, 36, 3)))
