"""The network every method trains: backbone -> optional bottleneck -> head.

`Classifier.__call__(images, train)` returns `(features, logits)`; `features` is
the bottleneck output (or the pooled backbone output when there is no
bottleneck), which is where discrepancy losses and discriminators attach, as in
TLlib's `ImageClassifier`. The bottleneck and head variants cover TLlib's
methods: `Linear -> [BatchNorm] -> ReLU -> [Dropout]` bottlenecks and the heads of
`tljax.models.heads`. Linear layers start as PyTorch's do, as TLlib's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.losses.adversarial import scale_gradient
from tljax.models.heads import batch_norm_scale_init, create_head, dense, output_activation
from tljax.models.layers import BatchNorm


class Bottleneck(nn.Module):
  """(Linear -> [BatchNorm] -> [ReLU] -> [Dropout]) x `layers`.

  TLlib's DANN/CDAN/MCC/BSP bottleneck is `norm=True, dropout=0`; JAN's and MDD's
  `norm=True, dropout=0.5`; DAN's `norm=False, dropout=0.5`; AFN's
  `norm=True, dropout=0.5, l2_preserving_dropout=True`; OSBP's two such blocks
  (`layers=2, norm=True, dropout=0.5`); UAN's (the authors' code) one linear
  layer alone (`norm=False, relu=False`).

  Attributes:
    layers: blocks; the first's layers are `linear` / `bn`, the k-th's
      (k >= 1) `linear{k}` / `bn{k}`.
    relu: the ReLU after each block's linear layer (and BatchNorm).
    l2_preserving_dropout: scale kept units by `1/sqrt(1-p)` instead of
      `1/(1-p)`, so the expected squared norm is kept (TLlib's AFN block).
    init_scheme: the init scheme of its layers (`tljax.models.heads.INIT_SCHEMES`).
  """

  features: int = 256
  norm: bool = True
  dropout: float = 0.0
  l2_preserving_dropout: bool = False
  init_scheme: str = "torch"
  frozen_norm: str = ""
  dtype: Any = jnp.float32
  layers: int = 1
  relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for block in range(self.layers):
      suffix = str(block) if block else ""
      x = dense(self.features, x.shape[-1], self.dtype, f"linear{suffix}",
                init=self.init_scheme, role="bottleneck")(x)
      if self.norm:
        x = BatchNorm(frozen=self.frozen_norm, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                      scale_init=batch_norm_scale_init(self.init_scheme),
                      name=f"bn{suffix}")(x, train)
      if self.relu:
        x = nn.relu(x)
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.l2_preserving_dropout and train:
          x = x * jnp.sqrt(1.0 - self.dropout).astype(x.dtype)
    return x


class Classifier(nn.Module):
  """`(backbone, bottleneck, head)` with outputs `(features, logits)`.

  Attributes:
    backbone: module mapping images `(B, H, W, C)` to pooled features `(B, D)`;
      called as `backbone(images, train=train)`.
    num_classes: size of the head.
    bottleneck_dim: 0 for no bottleneck (features = pooled backbone output).
    bottleneck_norm: BatchNorm in the bottleneck.
    bottleneck_dropout: dropout after the bottleneck's ReLU.
    bottleneck_layers: blocks of the bottleneck (OSBP: 2).
    bottleneck_relu: the ReLU of each bottleneck block (UAN's authors: none).
    head_type: 'linear', 'two_layer' (TLlib's MDD head), 'mcd' (MCD's
      three-layer head), 'multi_source' (MFSAN's per-domain branches) or
      'bn_mlp' (TLlib's DD regressor head); '' picks 'two_layer' when
      `head_hidden` > 0, else 'linear'.
    head_hidden: the hidden width of a 'two_layer', 'mcd', 'multi_source' or
      'bn_mlp' head.
    head_dropout: dropout inside those heads.
    bottleneck_l2_preserving_dropout: TLlib's AFN dropout (see `Bottleneck`).
    init_scheme: init scheme of the bottleneck and head (`tljax.models.heads.INIT_SCHEMES`).
    output_activation: '' (logits, unbounded) or 'sigmoid' (TLlib's regressors:
      factors in [0, 1]); the second output goes through it.
    frozen_norm: regex of BatchNorm paths that keep their running statistics.
    dtype: compute dtype (features and logits are returned in fp32, or fp64
      when computing in fp64).
    feature_dropout: dropout on the features before the head (TLlib's DG
      `ImageClassifier` with `--freeze-bn`: 0.1); 0 for none.
    num_branches: branches of a 'multi_source' head (one per labelled domain).
  """

  backbone: nn.Module
  num_classes: int
  bottleneck_dim: int = 0
  bottleneck_norm: bool = True
  bottleneck_dropout: float = 0.0
  head_type: str = ""
  head_hidden: int = 0
  head_dropout: float = 0.5
  bottleneck_l2_preserving_dropout: bool = False
  init_scheme: str = "torch"
  output_activation: str = ""
  frozen_norm: str = ""
  dtype: Any = jnp.float32
  bottleneck_layers: int = 1
  bottleneck_relu: bool = True
  feature_dropout: float = 0.0
  num_branches: int = 1

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, domains: jax.Array | None = None,
               branches: bool = False,
               head_gradient_scale: float | jax.Array | None = None) -> tuple[jax.Array, Any]:
    """`(features, logits)`; with `branches=True` (a 'multi_source' head),
    `(features, (branch features, branch logits))`. `domains`: each image's
    labelled-domain position, for backbones whose layers read it (MixStyle).
    `head_gradient_scale`: a factor on the gradient the head sends back into
    the features (OSBP's gradient reversal between them: -1); None: 1."""
    inputs = {} if domains is None else {"domains": domains}
    features = self.backbone(images, train=train, **inputs)
    if self.bottleneck_dim:
      features = Bottleneck(self.bottleneck_dim, self.bottleneck_norm, self.bottleneck_dropout,
                            self.bottleneck_l2_preserving_dropout, self.init_scheme,
                            frozen_norm=self.frozen_norm, dtype=self.dtype,
                            layers=self.bottleneck_layers, relu=self.bottleneck_relu,
                            name="bottleneck")(features, train)
    if self.feature_dropout:
      features = nn.Dropout(self.feature_dropout, deterministic=not train)(features)
    head_input = features if head_gradient_scale is None else scale_gradient(
        features, head_gradient_scale)
    head_type = self.head_type or ("two_layer" if self.head_hidden else "linear")
    head = create_head(head_type, self.num_classes, hidden=self.head_hidden,
                       dropout=self.head_dropout, dtype=self.dtype, init=self.init_scheme,
                       num_branches=self.num_branches, name="head")
    out = jnp.promote_types(self.dtype, jnp.float32)
    if branches:
      if head_type != "multi_source":
        raise ValueError("branch outputs need config.model.head_type='multi_source'")
      branch_features, branch_logits = head(head_input, train, branches=True)
      return features.astype(out), (branch_features.astype(out), branch_logits.astype(out))
    logits = output_activation(self.output_activation, head(head_input, train))
    return features.astype(out), logits.astype(out)
