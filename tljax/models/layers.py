"""Layers shared by every backbone.

`BatchNorm` is flax's BatchNorm with PyTorch's running variance and one piece of
data: a regex over the module's '/'-joined path. Where it matches, the layer
normalises with its running averages even in training and leaves them untouched,
which is what fine-tuning needs for the frozen part of a pretrained network.
`train.py` derives the regex from the frozen parameter groups, so freezing stays
data, not code.

In training it normalises through `batch_norm_train`, whose gradient is written
out by hand: two reductions and one elementwise pass over the activations,
where differentiating flax's formula leaves XLA a dozen passes per layer (a
quarter of a ResNet-50 step on a CPU went there).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _statistics_dtype(x: jax.Array) -> Any:
  """Statistics are computed in at least fp32 (fp64 runs stay fp64)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and biased variance (at least fp32) over all axes but the last, in one pass.

  `E[x^2] - E[x]^2`, clipped at 0, as flax's `use_fast_variance`: both sums
  read the activations once, in the same loop.
  """
  axes = tuple(range(x.ndim - 1))
  x = x.astype(_statistics_dtype(x))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch normalisation over all axes but the last.

  Args:
    x: activations `(..., C)`, any float dtype; statistics are at least fp32.
    scale, bias: `(C,)` affine parameters.
    epsilon: added to the variance.

  Returns:
    `(y, mean, var)`: `y` in `x.dtype`, and the (at least fp32) batch mean and
    biased variance (for the running averages).
  """
  mean, var = _batch_statistics(x)
  multiplier = jax.lax.rsqrt(var + epsilon) * scale
  y = (x.astype(_statistics_dtype(x)) - mean) * multiplier + bias
  return y.astype(x.dtype), mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  mean, var = _batch_statistics(x)
  inv_std = jax.lax.rsqrt(var + epsilon)
  multiplier = inv_std * scale
  y = (x.astype(_statistics_dtype(x)) - mean) * multiplier + bias
  return (y.astype(x.dtype), mean, var), (x, mean, inv_std, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  """dx = a * dy + b * x + c with per-channel a, b, c.

  With xhat = (x - mean) * inv_std, N values per channel and g = scale:
    dx = g inv_std (dy - mean(dy) - xhat mean(dy xhat))
         + d_mean / N + d_var 2 (x - mean) / N
  where d_mean, d_var are the cotangents of the returned statistics (zero when
  they only feed the running averages).
  """
  del epsilon
  x, mean, inv_std, scale = residuals
  d_y, d_mean, d_var = cotangents
  axes = tuple(range(x.ndim - 1))
  count = math.prod(x.shape[:-1])
  x32, d_y32 = x.astype(_statistics_dtype(x)), d_y.astype(_statistics_dtype(x))
  x_hat = (x32 - mean) * inv_std
  d_bias = jnp.sum(d_y32, axes)
  d_scale = jnp.sum(d_y32 * x_hat, axes)
  a = scale * inv_std
  b_hat = (-a * d_scale + 2.0 * d_var / inv_std) / count  # coefficient of x_hat
  c = (d_mean - a * d_bias) / count
  d_x = a * d_y32 + b_hat * x_hat + c
  return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis, called with `train`, frozen where `frozen`
  matches its path.

  The variables (`params/scale`, `params/bias`, `batch_stats/mean`,
  `batch_stats/var`) and the function are `nn.BatchNorm`'s with fast variance
  and (at least) fp32 statistics; in training the normalisation runs through
  `batch_norm_train`, with the biased batch variance as in flax and PyTorch.
  Running averages move as `momentum * old + (1 - momentum) * batch`, and not
  while the module is initialised; the batch variance they average is the
  *unbiased* one (`n / (n - 1)` times it, `n` the values per feature), as
  `torch.nn.BatchNorm*d` does, so that statistics, evaluation and frozen layers
  match TLlib's.

  Attributes:
    frozen: regex (`re.fullmatch`) over the module path, e.g.
      `backbone/layer1_0/bn1`; empty freezes nothing.
    momentum: weight of the old running average.
    epsilon: added to the variance.
    dtype: output dtype (default: that of the input and parameters).
    param_dtype: dtype of `scale` and `bias`.
    biased_running_var: average the biased batch variance instead (flax's
      convention); off by default.
  """

  frozen: str = ""
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros
  biased_running_var: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    path = "/".join(self.scope.path)
    is_frozen = bool(self.frozen) and re.fullmatch(self.frozen, path) is not None
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    compute = _statistics_dtype(x)
    scale32, bias32 = scale.astype(compute), bias.astype(compute)
    if not train or is_frozen:
      multiplier = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale32
      y = (x - ra_mean.value) * multiplier + bias32
      return y.astype(dtype)
    y, mean, var = batch_norm_train(x, scale32, bias32, self.epsilon)
    if not self.is_initializing():
      if not self.biased_running_var:
        count = math.prod(x.shape[:-1])
        var = var * (count / max(count - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


def torch_linear_init(fan_in: int):
  """PyTorch's default `nn.Linear` init, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, for
  kernel and bias: layers TLlib builds without an explicit init start the same here."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jax.numpy.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
