"""The network every method trains: backbone -> optional bottleneck -> head.

`Classifier.__call__(images, train)` returns `(features, logits)`; `features` is
the bottleneck output (or the pooled backbone output when there is no
bottleneck), which is where discrepancy losses and discriminators attach, as in
TLlib's `ImageClassifier`. The bottleneck and head variants cover TLlib's
methods: `Linear -> [BatchNorm] -> ReLU -> [Dropout]` bottlenecks and MDD's
two-layer heads. Linear layers start as PyTorch's do, as TLlib's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models.layers import BatchNorm, torch_linear_init


def _dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  init = torch_linear_init(fan_in)
  return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=init, name=name)


class Bottleneck(nn.Module):
  """Linear -> [BatchNorm] -> ReLU -> [Dropout].

  TLlib's DANN/CDAN/MCC/BSP bottleneck is `norm=True, dropout=0`; JAN's and MDD's
  `norm=True, dropout=0.5`; DAN's `norm=False, dropout=0.5`.
  """

  features: int = 256
  norm: bool = True
  dropout: float = 0.0
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _dense(self.features, x.shape[-1], self.dtype, "linear")(x)
    if self.norm:
      x = BatchNorm(frozen=self.frozen_norm, momentum=0.9, epsilon=1e-5,
                    dtype=self.dtype, name="bn")(x, train)
    x = nn.relu(x)
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class TwoLayerHead(nn.Module):
  """`Dense(hidden) -> ReLU -> Dropout -> Dense(num_classes)` (TLlib's MDD heads)."""

  num_classes: int
  hidden: int = 1024
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _dense(self.hidden, x.shape[-1], self.dtype, "hidden")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    return _dense(self.num_classes, self.hidden, self.dtype, "linear")(x)


class Classifier(nn.Module):
  """`(backbone, bottleneck, head)` with outputs `(features, logits)`.

  Attributes:
    backbone: module mapping images `(B, H, W, C)` to pooled features `(B, D)`;
      called as `backbone(images, train=train)`.
    num_classes: size of the head.
    bottleneck_dim: 0 for no bottleneck (features = pooled backbone output).
    bottleneck_norm: BatchNorm in the bottleneck.
    bottleneck_dropout: dropout after the bottleneck's ReLU.
    head_hidden: 0 for a linear head; else the width of a two-layer head.
    head_dropout: dropout inside a two-layer head.
    frozen_norm: regex of BatchNorm paths that keep their running statistics.
    dtype: compute dtype (features and logits are returned in fp32).
  """

  backbone: nn.Module
  num_classes: int
  bottleneck_dim: int = 0
  bottleneck_norm: bool = True
  bottleneck_dropout: float = 0.0
  head_hidden: int = 0
  head_dropout: float = 0.5
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    features = self.backbone(images, train=train)
    if self.bottleneck_dim:
      features = Bottleneck(self.bottleneck_dim, self.bottleneck_norm, self.bottleneck_dropout,
                            frozen_norm=self.frozen_norm, dtype=self.dtype,
                            name="bottleneck")(features, train)
    if self.head_hidden:
      logits = TwoLayerHead(self.num_classes, self.head_hidden, self.head_dropout,
                            dtype=self.dtype, name="head")(features, train)
    else:
      logits = _dense(self.num_classes, features.shape[-1], self.dtype, "head")(features)
    return features.astype(jnp.float32), logits.astype(jnp.float32)
