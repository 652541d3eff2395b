"""ResNet-18/34/50/101/152 backbones in torchvision's layout.

The layout is torchvision's ResNet v1.5 (stride on the 3x3 convolution of a
bottleneck), so that ImageNet weights from torchvision or timm load one to one
through `tljax.models.checkpoints`. Module names follow the state-dict keys:
`layer1.0.conv1` becomes `layer1_0/conv1`, `layer1.0.downsample.0` becomes
`layer1_0/downsample_conv` and `layer1.0.downsample.1` `layer1_0/downsample_bn`.

Images are NHWC; the output is the globally average-pooled feature vector
(512 for ResNet-18/34, 2048 for the bottleneck ResNets), i.e. torchvision's
network without `fc`. The classifier's head replaces `fc`.

On the CPU backend the convolutions run through `cpu_conv` (`conv_impl='auto'`):
the same function as XLA's convolution, with gradients written as the large
matmuls XLA:CPU runs well (see `experiments/results/profile.md`); accelerators
keep XLA's convolutions. `remat=True` recomputes each block in the backward
pass to save activation memory.

Domain-generalisation variants (`tljax.models.normalization`, TLlib's DG
backbones): MixStyle after chosen stages (`mixstyle_layers=('layer1',
'layer2', 'layer3')`), and IBN-Net's `resnet{18,34,50,101}_ibn_{a,b}`, whose
module names follow IBN-Net's state dicts (`layer1_0/bn1/IN`,
`layer1_0/bn1/BN`, `layer1_0/IN`): IBN-a normalises the first half of the
channels of every block's first norm per example (stages 1-3), IBN-b puts an
InstanceNorm in the stem instead of BatchNorm and after the residual sum of
the last block of stages 1-2. Either loads IBN-Net's checkpoints, or a
torchvision ResNet's, whose BatchNorm weights fill the BatchNorm parts (see
`tljax.models.checkpoints`), the InstanceNorm parts keeping their init.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models import register
from tljax.models.layers import BatchNorm
from tljax.models.normalization import InstanceBatchNorm, InstanceNorm, MixStyle

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pointwise_dot(inputs: jax.Array, matrix: jax.Array, strides: Sequence[int]) -> jax.Array:
  """A 1x1 convolution without padding: `inputs[:, ::s, ::s] @ matrix`."""
  stride_h, stride_w = strides
  if (stride_h, stride_w) != (1, 1):
    inputs = inputs[:, ::stride_h, ::stride_w, :]
  return jax.lax.dot_general(inputs, matrix, (((3,), (0,)), ((), ())))


def _is_pointwise(kernel_shape: Sequence[int], padding: Any) -> bool:
  return (tuple(kernel_shape[:2]) == (1, 1)
          and all(tuple(pad) == (0, 0) for pad in padding))


def _xla_conv(inputs: jax.Array, kernel: jax.Array, strides: Sequence[int],
              padding: Any) -> jax.Array:
  return jax.lax.conv_general_dilated(inputs, kernel, tuple(strides), tuple(padding),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches(inputs: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
             padding: Any, output_size: Sequence[int]) -> jax.Array:
  """im2col: `(B, Ho, Wo, kh*kw*C)`, taps in the kernel's (kh, kw, C) order."""
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  padded = jnp.pad(inputs, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
  (stride_h, stride_w), (out_h, out_w) = strides, output_size
  return jnp.concatenate(
      [padded[:, i:i + stride_h * (out_h - 1) + 1:stride_h,
              j:j + stride_w * (out_w - 1) + 1:stride_w, :]
       for i in range(kernel_size[0]) for j in range(kernel_size[1])], axis=-1)


def _transposed_copy(matrix: jax.Array) -> jax.Array:
  """`matrix.T`, materialised.

  The barrier keeps XLA from folding the transpose back into the dot that
  reads it: XLA:CPU's fast (YNNPACK) matmul takes its left operand only with
  the contracted axis last, and a plain copy costs far less than the slower
  matmul XLA picks for a transposed operand.
  """
  return jax.lax.optimization_barrier(jnp.transpose(matrix))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def cpu_conv(inputs: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """NHWC x HWIO convolution whose gradients are written for XLA:CPU.

  Same function as `lax.conv_general_dilated` (explicit padding, no dilation,
  one group). Forward: 1x1 kernels as matmuls, others as XLA's convolution.
  Backward:
  - input gradient: a matmul (1x1) or XLA's transposed convolution;
  - kernel gradient: `dy^T @ im2col(x)`, one large matmul. XLA's own kernel
    gradient is a convolution over the batch axis after transposing both
    activations and gradients; on a CPU it ran 2-7x slower than the forward
    convolution of the same size (and grows worse with the batch).
  Both gradients start from materialised activations and output gradients,
  so that XLA does not recompute the BatchNorm/ReLU producers inside the
  transposes it needs.
  """
  if _is_pointwise(kernel.shape, padding):
    return _pointwise_dot(inputs, kernel[0, 0], strides)
  return _xla_conv(inputs, kernel, strides, padding)


def _cpu_conv_fwd(inputs, kernel, strides, padding):
  return cpu_conv(inputs, kernel, strides, padding), (inputs, kernel)


def _cpu_conv_bwd(strides, padding, residuals, d_out):
  inputs, kernel = residuals
  inputs, d_out = jax.lax.optimization_barrier((inputs, d_out))
  kernel_h, kernel_w, in_features, out_features = kernel.shape
  batch, out_h, out_w, _ = d_out.shape
  rows = batch * out_h * out_w
  d_out_matrix = d_out.reshape(rows, out_features)
  if _is_pointwise(kernel.shape, padding):
    d_strided = jax.lax.dot_general(d_out, kernel[0, 0], (((3,), (1,)), ((), ())))
    # Scatter back onto the strided grid by interior padding with zeros.
    config = [(0, 0, 0)] + [
        (0, inputs.shape[axis] - (d_strided.shape[axis] - 1) * stride - 1, stride - 1)
        for axis, stride in ((1, strides[0]), (2, strides[1]))] + [(0, 0, 0)]
    d_inputs = jax.lax.pad(d_strided, jnp.zeros((), d_strided.dtype), config)
    strided = inputs[:, ::strides[0], ::strides[1], :].reshape(rows, in_features)
    # Transpose whichever operand has fewer channels.
    if in_features <= out_features:
      d_matrix = _transposed_copy(strided) @ d_out_matrix
    else:
      d_matrix = jnp.transpose(_transposed_copy(d_out_matrix) @ strided)
    return d_inputs, d_matrix.reshape(kernel.shape).astype(kernel.dtype)
  d_inputs = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), inputs)[1](d_out)[0]
  patches = _patches(inputs, (kernel_h, kernel_w), strides, padding, (out_h, out_w))
  d_kernel_t = _transposed_copy(d_out_matrix) @ patches.reshape(rows, -1)
  d_kernel = jnp.transpose(d_kernel_t).reshape(kernel.shape)
  return d_inputs, d_kernel.astype(kernel.dtype)


cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_general_dilated(inputs: jax.Array, kernel: jax.Array, window_strides: Sequence[int],
                         padding: Any, *, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, impl: str = "auto") -> jax.Array:
  """`lax.conv_general_dilated` for `nn.Conv`, choosing the implementation.

  `impl`: 'xla' is XLA's convolution; 'cpu' is `cpu_conv`; 'auto' picks
  'cpu' on the CPU backend and 'xla' on accelerators (whose convolution
  libraries need no help). Cases `cpu_conv` does not cover (dilation, groups,
  string padding, layouts other than NHWC/HWIO) always go to XLA.
  """
  if impl == "auto":
    impl = "cpu" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("cpu", "xla"):
    raise ValueError(f"conv_impl must be 'auto', 'cpu' or 'xla', got {impl!r}")
  nhwc = dimension_numbers is None or (
      tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
      and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
      and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  supported = (impl == "cpu" and nhwc and inputs.ndim == 4 and feature_group_count == 1
               and not isinstance(padding, str) and precision is None
               and all(d == 1 for d in (lhs_dilation or (1, 1)))
               and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not supported:
    return jax.lax.conv_general_dilated(
        inputs, kernel, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision)
  padding = tuple(tuple(int(p) for p in pad) for pad in padding)
  return cpu_conv(inputs, kernel, tuple(int(s) for s in window_strides), padding)


def pointwise_conv_as_dot(inputs: jax.Array, kernel: jax.Array, window_strides: Sequence[int],
                          padding: Any, **kwargs) -> jax.Array:
  """`conv_general_dilated` with `impl='cpu'`: 1x1 kernels run as matmuls."""
  return conv_general_dilated(inputs, kernel, window_strides, padding, impl="cpu", **kwargs)


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str,
          impl: str = "auto") -> nn.Conv:
  """A bias-free convolution with torch's symmetric `padding=kernel // 2`.

  Explicit padding rather than "SAME": for stride 2 on an even input, "SAME"
  pads only on the bottom/right, which would shift every feature map by one
  pixel relative to the torch network whose weights we load.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32,
                 conv_general_dilated=functools.partial(conv_general_dilated, impl=impl),
                 name=name)


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
    conv_impl: see `conv_general_dilated`.
  """

  expansion: ClassVar[int] = 1
  planes: int
  strides: int = 1
  frozen_norm: str = ""
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  ibn: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(_batch_norm, self.frozen_norm, self.dtype)
    conv = functools.partial(_conv, dtype=self.dtype, impl=self.conv_impl)
    shortcut = x
    y = conv(self.planes, 3, self.strides, name="conv1")(x)
    y = nn.relu(_first_norm(self.ibn, self.frozen_norm, self.dtype)(y, train))
    y = conv(self.planes, 3, 1, name="conv2")(y)
    y = norm("bn2")(y, train)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      shortcut = conv(self.planes * self.expansion, 1, self.strides,
                      name="downsample_conv")(x)
      shortcut = norm("downsample_bn")(shortcut, train)
    return nn.relu(_after_sum(self.ibn, self.dtype, y + shortcut))


def _first_norm(ibn: str | None, frozen_norm: str, dtype: Any):
  """A block's first norm, `bn1`: IBN-a's instance-batch norm, or BatchNorm."""
  if ibn == "a":
    return InstanceBatchNorm(frozen=frozen_norm, dtype=dtype, name="bn1")
  return _batch_norm(frozen_norm, dtype, "bn1")


def _after_sum(ibn: str | None, dtype: Any, x: jax.Array) -> jax.Array:
  """IBN-b's InstanceNorm of a block's residual sum (`IN`), else the sum itself."""
  return InstanceNorm(dtype=dtype, name="IN")(x) if ibn == "b" else x


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand, residual (ResNet-50+).

  Attributes:
    planes: channels of the inner convolutions; the output has 4x as many.
    strides: stride of the 3x3 convolution and of the shortcut.
    frozen_norm: regex of BatchNorm paths that keep running statistics.
    dtype: compute dtype.
    conv_impl: see `conv_general_dilated`.
  """

  expansion: ClassVar[int] = 4
  planes: int
  strides: int = 1
  frozen_norm: str = ""
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  ibn: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(_batch_norm, self.frozen_norm, self.dtype)
    conv = functools.partial(_conv, dtype=self.dtype, impl=self.conv_impl)
    shortcut = x
    y = conv(self.planes, 1, 1, name="conv1")(x)
    y = nn.relu(_first_norm(self.ibn, self.frozen_norm, self.dtype)(y, train))
    y = conv(self.planes, 3, self.strides, name="conv2")(y)
    y = nn.relu(norm("bn2")(y, train))
    y = conv(self.planes * self.expansion, 1, 1, name="conv3")(y)
    y = norm("bn3")(y, train)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      shortcut = conv(self.planes * self.expansion, 1, self.strides,
                      name="downsample_conv")(x)
      shortcut = norm("downsample_bn")(shortcut, train)
    return nn.relu(_after_sum(self.ibn, self.dtype, y + shortcut))


class ResNet(nn.Module):
  """ResNet trunk: stem, four stages, global average pooling.

  Attributes:
    block: `BasicBlock` or `BottleneckBlock`.
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    frozen_norm: regex of BatchNorm paths (e.g. `backbone/.*`) that normalise
      with their running statistics even when `train=True`.
    dtype: compute dtype (parameters are always fp32).
    conv_impl: 'auto' (CPU: `cpu_conv`; accelerators: XLA's), 'cpu' or 'xla';
      see `conv_general_dilated`.
    remat: recompute each block's activations in the backward pass
      (`nn.remat`) instead of keeping them: less memory for large batches,
      about one more forward pass of compute.
    ibn: IBN-Net's setting per stage ('a', 'b' or None, TLlib's `ibn_cfg`):
      () for a plain ResNet.
    mixstyle_layers: stages ('layer1', 'layer2', 'layer3') after which a
      MixStyle layer mixes feature statistics in training.
    mixstyle_p, mixstyle_alpha, mixstyle_mode: the MixStyle layers' settings.
  """

  block: type[nn.Module]
  stage_sizes: Sequence[int]
  frozen_norm: str = ""
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  remat: bool = False
  ibn: Sequence[str | None] = ()
  mixstyle_layers: Sequence[str] = ()
  mixstyle_p: float = 0.5
  mixstyle_alpha: float = 0.1
  mixstyle_mode: str = "crossdomain"

  @property
  def features_dim(self) -> int:
    return 512 * self.block.expansion

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               domains: jax.Array | None = None) -> jax.Array:
    """Maps `(B, H, W, 3)` images to `(B, features_dim)` pooled features."""
    unknown = sorted(set(self.mixstyle_layers) - {"layer1", "layer2", "layer3"})
    if unknown:
      raise ValueError(f"mixstyle_layers {unknown}: a ResNet mixes after layer1, layer2 or "
                       "layer3 (as TLlib's)")
    ibn = tuple(self.ibn) or (None,) * len(self.stage_sizes)
    x = _conv(64, 7, 2, self.dtype, "conv1", self.conv_impl)(images)
    if ibn[0] == "b":
      x = nn.relu(InstanceNorm(dtype=self.dtype, name="bn1")(x))
    else:
      x = nn.relu(_batch_norm(self.frozen_norm, self.dtype, "bn1")(x, train))
    # Padding for max pooling is -inf in flax, as in torch.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    # `train` is a Python bool that selects code paths: static under remat.
    block = nn.remat(self.block, static_argnums=(2,)) if self.remat else self.block
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        # IBN-b normalises only the last block's sum of its stages (IBN-Net's layout).
        block_ibn = ibn[stage] if ibn[stage] != "b" or index == num_blocks - 1 else None
        x = block(
            planes=64 * 2**stage,
            strides=2 if stage > 0 and index == 0 else 1,
            frozen_norm=self.frozen_norm,
            dtype=self.dtype,
            conv_impl=self.conv_impl,
            ibn=block_ibn,
            name=f"layer{stage + 1}_{index}",
        )(x, train)
      if f"layer{stage + 1}" in self.mixstyle_layers:
        x = MixStyle(self.mixstyle_p, self.mixstyle_alpha, self.mixstyle_mode,
                     name=f"mixstyle_layer{stage + 1}")(x, train, domains)
    # Pool in fp32 so that bf16 runs do not lose precision in the sum.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)


def _factory(block: type[nn.Module], stage_sizes: Sequence[int],
             ibn: Sequence[str | None] = ()):

  def create(*, dtype: Any = jnp.float32, frozen_norm: str = "", conv_impl: str = "auto",
             remat: bool = False, mixstyle_layers: Sequence[str] = (), mixstyle_p: float = 0.5,
             mixstyle_alpha: float = 0.1, mixstyle_mode: str = "crossdomain") -> ResNet:
    return ResNet(block=block, stage_sizes=tuple(stage_sizes), frozen_norm=frozen_norm,
                  dtype=dtype, conv_impl=conv_impl, remat=remat, ibn=tuple(ibn),
                  mixstyle_layers=tuple(mixstyle_layers), mixstyle_p=mixstyle_p,
                  mixstyle_alpha=mixstyle_alpha, mixstyle_mode=mixstyle_mode)

  return create


resnet18 = register("resnet18")(_factory(BasicBlock, (2, 2, 2, 2)))
resnet34 = register("resnet34")(_factory(BasicBlock, (3, 4, 6, 3)))
resnet50 = register("resnet50")(_factory(BottleneckBlock, (3, 4, 6, 3)))
resnet101 = register("resnet101")(_factory(BottleneckBlock, (3, 4, 23, 3)))
resnet152 = register("resnet152")(_factory(BottleneckBlock, (3, 8, 36, 3)))

# IBN-Net (TLlib's `tllib.normalization.ibn`): IBN-a in stages 1-3, IBN-b in 1-2.
IBN_A, IBN_B = ("a", "a", "a", None), ("b", "b", None, None)
for _name, _block, _sizes in (("resnet18", BasicBlock, (2, 2, 2, 2)),
                              ("resnet34", BasicBlock, (3, 4, 6, 3)),
                              ("resnet50", BottleneckBlock, (3, 4, 6, 3)),
                              ("resnet101", BottleneckBlock, (3, 4, 23, 3))):
  register(f"{_name}_ibn_a")(_factory(_block, _sizes, IBN_A))
  register(f"{_name}_ibn_b")(_factory(_block, _sizes, IBN_B))
