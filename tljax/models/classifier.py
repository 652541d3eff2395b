"""The network every method trains: backbone -> optional bottleneck -> head.

`Classifier.__call__(images, train)` returns `(features, logits)`; `features` is
the bottleneck output (or the pooled backbone output when there is no
bottleneck), which is where discrepancy losses and discriminators attach, as in
TLlib's `ImageClassifier`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models.layers import BatchNorm


class Bottleneck(nn.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout (TLlib's DA default: 256, p=0.5)."""

  features: int = 256
  dropout: float = 0.5
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # TLlib initialises the bottleneck linear with N(0, 0.005) and zero bias.
    x = nn.Dense(
        self.features,
        dtype=self.dtype,
        kernel_init=nn.initializers.normal(0.005),
        name="linear",
    )(x)
    x = BatchNorm(frozen=self.frozen_norm, momentum=0.9, epsilon=1e-5,
                  dtype=self.dtype, name="bn")(x, train)
    x = nn.relu(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class Classifier(nn.Module):
  """`(backbone, bottleneck, head)` with outputs `(features, logits)`.

  Attributes:
    backbone: module mapping images `(B, H, W, C)` to pooled features `(B, D)`;
      called as `backbone(images, train=train)`.
    num_classes: size of the head.
    bottleneck_dim: 0 for no bottleneck (features = pooled backbone output).
    bottleneck_dropout: dropout after the bottleneck's ReLU.
    frozen_norm: regex of BatchNorm paths that keep their running statistics.
    dtype: compute dtype of bottleneck and head (logits are returned in fp32).
  """

  backbone: nn.Module
  num_classes: int
  bottleneck_dim: int = 0
  bottleneck_dropout: float = 0.5
  frozen_norm: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    features = self.backbone(images, train=train)
    if self.bottleneck_dim:
      features = Bottleneck(self.bottleneck_dim, self.bottleneck_dropout,
                            frozen_norm=self.frozen_norm, dtype=self.dtype,
                            name="bottleneck")(features, train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
    return features.astype(jnp.float32), logits.astype(jnp.float32)
