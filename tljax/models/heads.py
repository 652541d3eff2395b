"""Heads and the networks methods add beside the classifier.

The classifier's heads (linear, TLlib's two-layer MDD head, MCD's
three-layer head, TLlib's regression head of DD), their output activation (a
sigmoid for regression factors in [0, 1]), and the networks methods play
against the features with: a domain discriminator (DANN, CDAN, ADDA) and an
adversarial head (MDD, DD). They
live here, with the other networks; `tljax/losses` holds only functions of
arrays. Linear layers start as PyTorch's do, as in TLlib.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models.layers import BatchNorm, torch_linear_init

HEAD_TYPES = ("linear", "two_layer", "mcd", "multi_source", "bn_mlp")
# How the linear layers of bottlenecks and heads start:
#   torch:     PyTorch's nn.Linear default, U(+-1/sqrt(fan_in)) for kernel and bias.
#   tllib_mdd: TLlib's MDD classifier: bottleneck N(0, 0.005) with bias 0.1,
#              heads N(0, 0.01) with bias 0.
#   tllib_afn: TLlib's AFN classifier: bottleneck and head N(0, 0.01) for kernel
#              and bias, bottleneck BatchNorm scale N(1, 0.01) and bias 0.
#   tllib_regressor: TLlib's DD regressor (`tllib.alignment.mdd.ImageRegressor`):
#              bottleneck as PyTorch's default, heads N(0, 0.01) with bias 0.
INIT_SCHEMES = ("torch", "tllib_mdd", "tllib_afn", "tllib_regressor")
# What the head's outputs go through: nothing (class logits, unbounded
# regression) or a sigmoid (TLlib's regressors, whose factors lie in [0, 1]).
OUTPUT_ACTIVATIONS = ("", "sigmoid")


def linear_init(scheme: str, role: str, fan_in: int) -> tuple[Any, Any]:
  """`(kernel_init, bias_init)` of a linear layer in `role` ('bottleneck' or 'head')."""
  if scheme == "torch":
    init = torch_linear_init(fan_in)
    return init, init
  if scheme == "tllib_mdd":
    if role == "bottleneck":
      return nn.initializers.normal(0.005), nn.initializers.constant(0.1)
    return nn.initializers.normal(0.01), nn.initializers.zeros
  if scheme == "tllib_afn":
    return nn.initializers.normal(0.01), nn.initializers.normal(0.01)
  if scheme == "tllib_regressor":
    if role == "bottleneck":
      init = torch_linear_init(fan_in)
      return init, init
    return nn.initializers.normal(0.01), nn.initializers.zeros
  raise ValueError(f"unknown init scheme {scheme!r}; choose one of {INIT_SCHEMES}")


def batch_norm_scale_init(scheme: str) -> Any:
  if scheme == "tllib_afn":
    return lambda key, shape, dtype=jnp.float32: 1.0 + 0.01 * jax.random.normal(key, shape, dtype)
  return nn.initializers.ones


def dense(features: int, fan_in: int, dtype: Any = jnp.float32, name: str | None = None, *,
          init: str = "torch", role: str = "head") -> nn.Dense:
  """`nn.Dense` started by an init scheme (default PyTorch's `nn.Linear`)."""
  kernel_init, bias_init = linear_init(init, role, fan_in)
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, name=name)


class TwoLayerHead(nn.Module):
  """`Dense(hidden) -> ReLU -> Dropout -> Dense(num_classes)` (TLlib's MDD heads)."""

  num_classes: int
  hidden: int = 1024
  dropout: float = 0.5
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = dense(self.hidden, x.shape[-1], self.dtype, "hidden", init=self.init_scheme)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    return dense(self.num_classes, self.hidden, self.dtype, "linear", init=self.init_scheme)(x)


class MCDHead(nn.Module):
  """TLlib's MCD `ImageClassifierHead` on pooled features:
  `Dropout -> Dense(h) -> BN -> ReLU -> Dropout -> Dense(h) -> BN -> ReLU -> Dense(C)`."""

  num_classes: int
  hidden: int = 1024
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i in range(2):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = dense(self.hidden, x.shape[-1], self.dtype, f"linear{i}")(x)
      x = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")(x, train)
      x = nn.relu(x)
    return dense(self.num_classes, self.hidden, self.dtype, "output")(x)


class MultiSourceHead(nn.Module):
  """One branch per labelled domain (MFSAN's domain-specific feature
  extractors and classifiers), each `Dense(hidden) -> BatchNorm -> ReLU ->
  Dense(num_classes)` on the shared features.

  Called as a head, it returns the log of the branches' mean class
  probabilities, so its arg-max is MFSAN's prediction (the average of the
  branches' softmax outputs) and its softmax those probabilities. With
  `branches=True` it returns every branch's features and logits, `(S, B,
  hidden)` and `(S, B, C)`, for the training step.
  """

  num_classes: int
  num_branches: int
  hidden: int = 256
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, branches: bool = False):
    features, logits = [], []
    for i in range(self.num_branches):
      h = dense(self.hidden, x.shape[-1], self.dtype, f"branch{i}_linear",
                init=self.init_scheme, role="bottleneck")(x)
      h = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"branch{i}_bn")(h, train)
      h = nn.relu(h)
      features.append(h)
      logits.append(dense(self.num_classes, self.hidden, self.dtype, f"branch{i}_head",
                          init=self.init_scheme)(h))
    features, logits = jnp.stack(features), jnp.stack(logits)
    if branches:
      return features, logits
    probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.log(jnp.mean(probabilities, axis=0))


class BatchNormMLPHead(nn.Module):
  """`(Dense(hidden) -> BatchNorm -> ReLU) x depth -> Dense(num_outputs)`.

  TLlib's DD regressor heads (`tllib.alignment.mdd.ImageRegressor`, the main
  and the adversarial one) are `(Conv3x3 -> BatchNorm2d -> ReLU) x 2 ->
  average pool -> Linear` over the bottleneck's feature map. On pooled
  features (a 1x1 map) a padded 3x3 convolution is a dense layer of its
  centre tap, and pooling the identity, so this is that head on the features
  tljax's backbones return (TLlib's ResNet-18 at 128 px has a 4x4 map). The
  output activation is applied by the caller. BatchNorm takes PyTorch's
  defaults (momentum 0.1, i.e. flax 0.9; eps 1e-5).
  """

  num_outputs: int
  hidden: int = 512
  depth: int = 2
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i in range(self.depth):
      x = dense(self.hidden, x.shape[-1], self.dtype, f"linear{i}", init=self.init_scheme)(x)
      x = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")(x, train)
      x = nn.relu(x)
    return dense(self.num_outputs, x.shape[-1], self.dtype, "output", init=self.init_scheme)(x)


def output_activation(name: str, outputs: jax.Array) -> jax.Array:
  """`outputs` through the activation `name` (`OUTPUT_ACTIVATIONS`)."""
  if name == "sigmoid":
    return jax.nn.sigmoid(outputs)
  if name:
    raise ValueError(f"unknown output activation {name!r}; choose one of {OUTPUT_ACTIVATIONS}")
  return outputs


def create_head(head_type: str, num_classes: int, *, hidden: int, dropout: float,
                dtype: Any = jnp.float32, init: str = "torch", num_branches: int = 1,
                name: str | None = None) -> nn.Module:
  """A head of `num_classes` outputs (classes or regression factors): 'linear',
  'two_layer' (MDD), 'mcd' (MCD), 'multi_source' (MFSAN: `num_branches`
  branches of width `hidden`) or 'bn_mlp' (DD's regressor, `hidden` wide)."""
  if head_type == "multi_source":
    if num_branches < 2:
      raise ValueError("the multi_source head has one branch per labelled domain and needs "
                       "several: name them in config.source, separated by commas")
    return MultiSourceHead(num_classes, num_branches, hidden or 256, dtype=dtype,
                           init_scheme=init, name=name)

  if head_type == "bn_mlp":
    return BatchNormMLPHead(num_classes, hidden, dtype=dtype, init_scheme=init, name=name)
  if head_type == "two_layer":
    return TwoLayerHead(num_classes, hidden, dropout, dtype=dtype, init_scheme=init, name=name)
  if head_type == "mcd":
    if init != "torch":
      raise ValueError(f"the mcd head starts as PyTorch's layers do; init {init!r} is not for it")
    return MCDHead(num_classes, hidden, dropout, dtype=dtype, name=name)
  if head_type == "linear":
    return _LinearHead(num_classes, dtype=dtype, init_scheme=init, name=name)
  raise ValueError(f"unknown head type {head_type!r}; choose one of {HEAD_TYPES}")


class _LinearHead(nn.Module):
  """One linear layer; its parameters sit directly under the head's name."""

  num_classes: int
  dtype: Any = jnp.float32
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    kernel_init, bias_init = linear_init(self.init_scheme, "head", x.shape[-1])
    kernel = self.param("kernel", kernel_init, (x.shape[-1], self.num_classes), jnp.float32)
    bias = self.param("bias", bias_init, (self.num_classes,), jnp.float32)
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class DomainDiscriminator(nn.Module):
  """TLlib's `DomainDiscriminator`, returning logits.

  `batch_norm=True` (TLlib's default): `(Dense -> BatchNorm -> ReLU) x
  len(hidden_sizes) -> Dense(1)`. `batch_norm=False` (TLlib's IWAN, UAN's
  authors' `AdversarialNetwork`): `(Dense -> ReLU -> Dropout(dropout)) x
  len(hidden_sizes) -> Dense(1)`. TLlib's final sigmoid is left to
  `domain_adversarial_loss`, which works on logits. BatchNorm uses PyTorch's
  defaults (momentum 0.1, i.e. flax 0.9; eps 1e-5). Call it on the
  concatenated source + target batch, as TLlib does, so the batch statistics
  cover both domains.

  Attributes:
    hidden_sizes: widths of the hidden layers (TLlib: two of `hidden_size`,
      1024 in its examples).
    dtype: compute dtype; the logits are returned in (at least) float32.
    batch_norm: BatchNorm after each hidden layer, or dropout after its ReLU.
    dropout: the dropout rate without BatchNorm (TLlib's 0.5).
  """

  hidden_sizes: Sequence[int] = (1024, 1024)
  dtype: Any = jnp.float32
  batch_norm: bool = True
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """`(n, *)` features -> `(n,)` domain logits (source is label 1)."""
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden_sizes):
      init = torch_linear_init(x.shape[-1])
      x = nn.Dense(width, dtype=self.dtype, kernel_init=init, bias_init=init,
                   name=f"linear{i}")(x)
      if self.batch_norm:
        x = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")(x, train)
      x = nn.relu(x)
      if not self.batch_norm and self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    init = torch_linear_init(x.shape[-1])
    logits = nn.Dense(1, dtype=self.dtype, kernel_init=init, bias_init=init, name="output")(x)
    return logits[:, 0].astype(jnp.promote_types(self.dtype, jnp.float32))
