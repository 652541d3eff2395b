"""A small convnet for the digits tasks (28-32 px), registered as `small_cnn`.

Three conv -> BatchNorm -> ReLU -> max-pool blocks, flattened. The
convolutions run one of three ways (`conv_impl`), all with `nn.Conv`'s
parameter layout (HWIO kernel, bias) and the same function:

- `'xla'`: XLA's convolution and its gradients.
- `'cpu'`: the same forward and input gradient; the kernel gradient is summed
  over slices of `KERNEL_GRAD_SLICE` examples. XLA:CPU computes a kernel
  gradient as a convolution whose feature axis is the batch, and its time grows
  faster than the batch (one core, a 14x14, 16 -> 32 channel layer: 2.1 ms for
  64 examples, 7.2 ms for 128, 2.9 ms as four slices of 32), so slicing makes
  the digits steps 5-12% faster (`experiments/results/profile.md`, section 6).
- `'im2col'`: gather the k*k shifted views, one matmul (slower than both at
  these sizes on the CPUs measured; kept for comparison).

`'auto'` (the default) picks `'cpu'` on the CPU backend, `'xla'` elsewhere.

Domain-generalisation options (`tljax.models.normalization`): MixStyle after
chosen blocks (`mixstyle_layers=('block1', 'block2')`), and IBN-Net's
instance-batch norm in place of the BatchNorm of the first blocks
(`ibn_blocks=2`: the first two of three, as IBN-a does in the first three of a
ResNet's four stages).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models import register
from tljax.models.layers import BatchNorm
from tljax.models.normalization import InstanceBatchNorm, MixStyle


# Convolution kernels: flax's default (LeCun normal, variance 1/fan_in) or
# PyTorch's nn.Conv2d default (kaiming_uniform with a=sqrt(5), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1/(3 fan_in)).
def _torch_conv_init(fan_in: int):
  bound = fan_in**-0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


_KERNEL_INITS = {
    "flax": lambda fan_in: nn.initializers.lecun_normal(),
    "torch": _torch_conv_init,
}


KERNEL_GRAD_SLICE = 32  # examples per slice of the kernel gradient (`conv_impl='cpu'`)


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_sliced_kernel_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`_xla_conv`, whose kernel gradient is the sum of the kernel gradients of
  slices of `KERNEL_GRAD_SLICE` examples (the same value up to rounding)."""
  return _xla_conv(x, kernel)


def _sliced_fwd(x, kernel):
  return _xla_conv(x, kernel), (x, kernel)


def _sliced_bwd(residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x_: _xla_conv(x_, kernel), x)[1](dy)[0]
  dkernel = jnp.zeros(kernel.shape, jnp.float32)  # summed in fp32 whatever the compute dtype
  for start in range(0, x.shape[0], KERNEL_GRAD_SLICE):
    piece = slice(start, start + KERNEL_GRAD_SLICE)
    grad = jax.vjp(lambda k_: _xla_conv(x[piece], k_), kernel)[1](dy[piece])[0]
    dkernel = dkernel + grad.astype(jnp.float32)
  return dx, dkernel.astype(kernel.dtype)


conv_sliced_kernel_grad.defvjp(_sliced_fwd, _sliced_bwd)


class Conv(nn.Module):
  """'SAME'-padded, stride-1 2D convolution with `nn.Conv`'s parameters."""

  features: int
  kernel_size: int
  impl: str = "auto"
  use_bias: bool = True
  kernel_init: str = "flax"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    in_features = x.shape[-1]
    kernel = self.param("kernel", _KERNEL_INITS[self.kernel_init](k * k * in_features),
                        (k, k, in_features, self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "cpu" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
      y = _xla_conv(x, kernel)
    elif impl == "cpu":
      y = conv_sliced_kernel_grad(x, kernel)
    elif impl == "im2col":
      height, width = x.shape[1:3]
      before = (k - 1) // 2
      padded = jnp.pad(x, ((0, 0), (before, k - 1 - before), (before, k - 1 - before), (0, 0)))
      # (B, H, W, k*k*C) in the kernel's (kh, kw, C) order.
      patches = jnp.concatenate(
          [padded[:, i:i + height, j:j + width, :] for i in range(k) for j in range(k)],
          axis=-1)
      y = patches @ kernel.reshape(k * k * in_features, self.features)
    else:
      raise ValueError(f"conv_impl must be 'auto', 'cpu', 'xla' or 'im2col', got {impl!r}")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/2 max-pool ('SAME': odd sizes padded with -inf), as `nn.max_pool`.

  Written as the elementwise maximum of the four strided views: its gradient is
  several times faster on CPU than reduce-window's select-and-scatter. (A
  reshape + `max` would be faster still, but its gradient finds the winner by
  comparing the input with the output; once XLA recomputes a fused input with
  different rounding, that comparison fails and the gradient is silently lost.)
  """
  height, width = x.shape[1:3]
  pad_h, pad_w = height % 2, width % 2
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                     jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


class SmallCNN(nn.Module):
  """Conv blocks -> flattened features.

  Attributes:
    widths: output channels of the three blocks.
    kernel_sizes: kernel size of each block.
    conv_impl: 'auto', 'cpu', 'xla' or 'im2col' (see module docstring).
    kernel_init: 'flax' (LeCun normal) or 'torch' (PyTorch's Conv2d default).
    frozen_norm: regex of BatchNorm paths that keep running statistics.
    dtype: compute dtype.
    mixstyle_layers: blocks ('block1', 'block2', ...) after which a MixStyle
      layer mixes feature statistics in training.
    mixstyle_p, mixstyle_alpha, mixstyle_mode: the MixStyle layers' settings
      (`normalization.MixStyle`).
    ibn_blocks: the first this many blocks normalise with IBN-a's
      instance-batch norm (`bn{i}/IN`, `bn{i}/BN`) instead of BatchNorm.
  """

  widths: Sequence[int] = (32, 64, 128)
  kernel_sizes: Sequence[int] = (5, 5, 3)
  conv_impl: str = "auto"
  kernel_init: str = "flax"
  frozen_norm: str = ""
  dtype: Any = jnp.float32
  mixstyle_layers: Sequence[str] = ()
  mixstyle_p: float = 0.5
  mixstyle_alpha: float = 0.1
  mixstyle_mode: str = "crossdomain"
  ibn_blocks: int = 0

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               domains: jax.Array | None = None) -> jax.Array:
    blocks = [f"block{i + 1}" for i in range(len(self.widths))]
    unknown = sorted(set(self.mixstyle_layers) - set(blocks[:-1]))
    if unknown:
      raise ValueError(f"mixstyle_layers {unknown}: a small_cnn mixes after one of "
                       f"{blocks[:-1]} (not the last block, whose output is the feature)")
    x = images.astype(self.dtype)
    for i, (width, size) in enumerate(zip(self.widths, self.kernel_sizes)):
      # No bias: the BatchNorm after it removes any (its gradient is only rounding noise).
      x = Conv(width, size, impl=self.conv_impl, use_bias=False, kernel_init=self.kernel_init,
               dtype=self.dtype, name=f"conv{i + 1}")(x)
      if i < self.ibn_blocks:
        x = InstanceBatchNorm(frozen=self.frozen_norm, dtype=self.dtype,
                              name=f"bn{i + 1}")(x, train)
      else:
        x = BatchNorm(frozen=self.frozen_norm, momentum=0.9, epsilon=1e-5,
                      dtype=self.dtype, name=f"bn{i + 1}")(x, train)
      x = nn.relu(x)
      x = _max_pool_2x2(x)
      if blocks[i] in self.mixstyle_layers:
        x = MixStyle(self.mixstyle_p, self.mixstyle_alpha, self.mixstyle_mode,
                     name=f"mixstyle_{blocks[i]}")(x, train, domains)
    return x.reshape(x.shape[0], -1)


@register("small_cnn")
def small_cnn(**kwargs) -> SmallCNN:
  return SmallCNN(**kwargs)
