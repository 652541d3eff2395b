"""Vision Transformer backbones (ViT-Ti/S/B/L, patch 16 or 32).

The architecture is the one of timm's `vit_*_patch*_224` and of the AugReg /
big_vision checkpoints: a strided-convolution patch embedding, learned position
embeddings, a class token, pre-norm encoder blocks (LayerNorm eps 1e-6, exact
GELU), a final LayerNorm, and the class token after that norm as the feature
vector.

Parameter names are big_vision's, so its `.npz` files load without renaming:
`embedding`, `cls`, `pos_embedding`, `Transformer/encoderblock_{i}/`
(`LayerNorm_0`, `MultiHeadDotProductAttention_0/{query,key,value,out}`,
`LayerNorm_1`, `MlpBlock_0/Dense_{0,1}`) and `Transformer/encoder_norm`.
Like big_vision, `pos_embedding` covers the patch grid only and is added before
the class token is prepended; timm's and AugReg's class-token position
embedding is folded into `cls` by the checkpoint converter, which is the same
function (`(cls + pe_cls, patches + pe_grid)` either way).

Attention (`SelfAttention`) keeps `nn.MultiHeadDotProductAttention`'s
parameters but runs the three projections as one matmul and the attention as
`jax.nn.dot_product_attention` (`attention_impl='cudnn'` for the fused GPU
kernel). `remat=True` recomputes each encoder block in the backward pass;
with `scan_blocks=True` the blocks run as one looped program, so that the
backward pass holds one block's activations at a time on every backend.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tljax.models import register

# (width, depth, mlp_dim, num_heads), Table 2 of arXiv:2106.04560.
VARIANTS = {
    "tiny": (192, 12, 768, 3),
    "small": (384, 12, 1536, 6),
    "base": (768, 12, 3072, 12),
    "large": (1024, 24, 4096, 16),
}

_dense_init = dict(kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=nn.initializers.normal(stddev=1e-6))


class DropPath(nn.Module):
  """Stochastic depth: drops a sample's whole residual branch with `rate`."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # A traced rate (the blocks of a scanned encoder, `Encoder.scan_blocks`)
    # always draws; a rate of 0 keeps every example then.
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class MlpBlock(nn.Module):
  """Dense -> exact GELU -> dropout -> Dense."""

  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              **_dense_init)
    width = x.shape[-1]
    x = dense(self.mlp_dim, name="Dense_0")(x)
    # timm and the AugReg checkpoints use the erf GELU, not the tanh one.
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = dense(width, name="Dense_1")(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class _DenseParams(nn.Module):
  """The `kernel` and `bias` of an `nn.DenseGeneral`, under its name.

  Initialised as `DenseGeneral` does: the kernel initialiser sees the
  flattened `(inputs, outputs)` matrix.
  """

  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  inputs: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    flat_shape = (self.inputs, int(np.prod(self.kernel_shape)) // self.inputs)
    xavier = nn.initializers.xavier_uniform()
    kernel = self.param("kernel",
                        lambda key: xavier(key, flat_shape).reshape(self.kernel_shape))
    bias = self.param("bias", nn.initializers.zeros, self.bias_shape)
    return kernel, bias


class SelfAttention(nn.Module):
  """Multi-head self-attention with `nn.MultiHeadDotProductAttention`'s parameters.

  `query`, `key`, `value` kernels `(width, heads, head_dim)` and `out`
  `(heads, head_dim, width)`, so checkpoints load unchanged. The three input
  projections run as one matmul (three times wider, which matrix kernels use
  better than three narrow ones) and the attention as
  `jax.nn.dot_product_attention`, with the softmax in fp32.

  Attributes:
    num_heads: attention heads.
    dropout: dropout on the attention weights (training only).
    implementation: `jax.nn.dot_product_attention`'s: None (XLA; JAX picks),
      'xla', or 'cudnn' (fused kernels on NVIDIA GPUs).
    dtype: compute dtype.
  """

  num_heads: int
  dropout: float = 0.0
  implementation: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    projections = [
        _DenseParams((width, self.num_heads, head_dim), (self.num_heads, head_dim), width,
                     name=name)() for name in ("query", "key", "value")]
    kernel = jnp.concatenate([k.reshape(width, width) for k, _ in projections], axis=1)
    bias = jnp.concatenate([b.reshape(width) for _, b in projections])
    qkv = x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)
    query, key, value = jnp.split(qkv.reshape(batch, tokens, 3, self.num_heads, head_dim), 3,
                                  axis=2)
    query, key, value = (t[:, :, 0] for t in (query, key, value))
    if train and self.dropout > 0.0:
      attended = nn.dot_product_attention(
          query, key, value, dropout_rng=self.make_rng("dropout"),
          dropout_rate=self.dropout, deterministic=False, dtype=self.dtype,
          force_fp32_for_softmax=True)
    else:
      attended = jax.nn.dot_product_attention(query, key, value,
                                              implementation=self.implementation)
    out_kernel, out_bias = _DenseParams((self.num_heads, head_dim, width), (width,), width,
                                        name="out")()
    out = attended.reshape(batch, tokens, width) @ out_kernel.reshape(width, width).astype(
        self.dtype)
    return out + out_bias.astype(self.dtype)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  attention_impl: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layer_norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype,
                                   param_dtype=jnp.float32)
    y = layer_norm(name="LayerNorm_0")(x)
    y = SelfAttention(num_heads=self.num_heads, dropout=self.attention_dropout,
                      implementation=self.attention_impl, dtype=self.dtype,
                      name="MultiHeadDotProductAttention_0")(y, train)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = x + DropPath(self.drop_path)(y, train)
    y = layer_norm(name="LayerNorm_1")(x)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="MlpBlock_0")(y, train)
    return x + DropPath(self.drop_path)(y, train)


class Encoder(nn.Module):
  """The stack of encoder blocks plus the final LayerNorm, on the class token."""

  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  attention_impl: str | None = None
  remat: bool = False
  scan_blocks: bool = False
  dtype: Any = jnp.float32

  def _drop_path(self, index: int) -> float:
    return self.drop_path * index / max(self.depth - 1, 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.scan_blocks and not self.is_initializing():
      x = self._scanned(x, train)
    else:
      # `train` is a Python bool that selects code paths: static under remat.
      block = nn.remat(Encoder1DBlock, static_argnums=(2,)) if self.remat else Encoder1DBlock
      for index in range(self.depth):
        x = block(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                  attention_dropout=self.attention_dropout, drop_path=self._drop_path(index),
                  attention_impl=self.attention_impl, dtype=self.dtype,
                  name=f"encoderblock_{index}")(x, train)
    # LayerNorm acts per token, so normalising only the class token gives the
    # same features as normalising the whole sequence, at a fraction of the cost.
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32,
                        name="encoder_norm")(x[:, 0])


  def _scanned(self, x: jax.Array, train: bool) -> jax.Array:
    """The blocks as one program looped over their stacked parameters.

    The parameters stay `encoderblock_{i}` (checkpoints, converters and
    `param_groups` patterns see the unrolled layout); they are stacked here,
    inside the step. With `remat`, the backward pass recomputes one block at
    a time and keeps only the blocks' inputs: XLA:CPU hoists the recomputation
    of unrolled remat blocks and keeps every block's activations anyway.
    Dropout and stochastic depth draw from one key per block, split from the
    encoder's: the same distributions as the unrolled blocks, other draws.
    """
    params = self.variables["params"]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                           *[params[f"encoderblock_{i}"] for i in range(self.depth)])
    rates = jnp.asarray([self._drop_path(i) for i in range(self.depth)], jnp.float32)
    stochastic = train and max(self.dropout, self.attention_dropout, self.drop_path) > 0
    keys = jax.random.split(self.make_rng("dropout"), self.depth) if stochastic else None

    def body(x, inputs):
      block_params, rate, key = inputs
      block = Encoder1DBlock(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                             dropout=self.dropout, attention_dropout=self.attention_dropout,
                             drop_path=rate if self.drop_path else 0.0,
                             attention_impl=self.attention_impl, dtype=self.dtype)
      rngs = {"dropout": key} if key is not None else {}
      return block.apply({"params": block_params}, x, train, rngs=rngs), None

    if self.remat:
      body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, (stacked, rates, keys))
    return x


class VisionTransformer(nn.Module):
  """ViT with a class token; returns the normalised class token.

  Attributes:
    patch_size: side of the square patches.
    width: token dimension.
    depth: number of encoder blocks.
    mlp_dim: hidden size of the MLP blocks.
    num_heads: attention heads.
    image_size: side of the square input images, which fixes the number of
      position embeddings; None takes it from the input (`config.data.image_size`
      through the preprocessing). Pretrained embeddings for another size are
      resampled by the checkpoint loader.
    dropout: dropout after the embeddings, attention output and MLP layers.
    attention_dropout: dropout on the attention weights.
    drop_path: stochastic depth rate, rising linearly from 0 in the first block
      to this value in the last (as in timm).
    dtype: compute dtype (parameters are always fp32).
    frozen_norm: accepted for the backbone interface; a ViT has no BatchNorm.
    attention_impl: `jax.nn.dot_product_attention`'s `implementation`: None
      (JAX chooses), 'xla' or 'cudnn'.
    remat: recompute each encoder block's activations in the backward pass
      (`nn.remat`): less memory for large batches, about one more forward
      pass of compute.
    scan_blocks: run the encoder blocks as one program looped over their
      stacked parameters (`jax.lax.scan`; the parameters keep their names):
      with `remat`, the backward pass holds one block's activations at a time
      on every backend (unrolled, XLA:CPU keeps them all), and one block's
      program compiles instead of `depth`.
  """

  patch_size: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  image_size: int | None = None
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  frozen_norm: str = ""
  attention_impl: str | None = None
  remat: bool = False
  scan_blocks: bool = False

  @property
  def features_dim(self) -> int:
    return self.width

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Maps `(B, H, W, 3)` images to `(B, width)` features."""
    batch, image_height, image_width, _ = images.shape
    size = self.image_size or image_height
    if image_height != size or image_width != size or size % self.patch_size:
      raise ValueError(
          f"this ViT takes square images whose side is a multiple of {self.patch_size}"
          + (f" and is built for {self.image_size} px" if self.image_size else "")
          + f", but got {image_height}x{image_width}; set config.data.image_size (the "
          "checkpoint's position embeddings are resampled to it)")
    grid_size = size // self.patch_size
    x = nn.Conv(self.width, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), padding="VALID",
                dtype=self.dtype, param_dtype=jnp.float32, name="embedding")(images)
    x = jnp.reshape(x, (batch, -1, self.width))
    pos_embedding = self.param(
        "pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(self.width)),
        (1, grid_size**2, self.width), jnp.float32)
    x = x + pos_embedding.astype(x.dtype)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
    x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (batch, 1, 1)), x], axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return Encoder(
        depth=self.depth,
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        dropout=self.dropout,
        attention_dropout=self.attention_dropout,
        drop_path=self.drop_path,
        attention_impl=self.attention_impl,
        remat=self.remat,
        scan_blocks=self.scan_blocks,
        dtype=self.dtype,
        name="Transformer",
    )(x, train)


def resample_posemb(posemb: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
  """Resizes `(1, h*w, D)` grid position embeddings to `grid_size`, bilinearly.

  The source grid must be square. Uses `jax.image.resize(..., "bilinear")`
  (half-pixel centres, antialiased when shrinking), i.e. torch's
  `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`.
  Class-token embeddings are not part of the grid (see the module docstring).
  """
  num_tokens, dim = posemb.shape[1], posemb.shape[2]
  side = int(round(np.sqrt(num_tokens)))
  if side * side != num_tokens:
    raise ValueError(f"cannot resample position embeddings of {num_tokens} "
                     "tokens: not a square grid")
  if (side, side) == tuple(grid_size):
    return posemb
  grid = jnp.asarray(posemb, jnp.float32).reshape(side, side, dim)
  grid = jax.image.resize(grid, (*grid_size, dim), method="bilinear")
  return np.asarray(grid).reshape(1, grid_size[0] * grid_size[1], dim).astype(posemb.dtype)


def _factory(variant: str, patch_size: int):
  width, depth, mlp_dim, num_heads = VARIANTS[variant]

  def create(*, dtype: Any = jnp.float32, frozen_norm: str = "", image_size: int | None = None,
             dropout: float = 0.0, attention_dropout: float = 0.0,
             drop_path: float = 0.0, attention_impl: str | None = None,
             remat: bool = False, scan_blocks: bool = False) -> VisionTransformer:
    if image_size and image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not a multiple of the patch "
                       f"size {patch_size}")
    return VisionTransformer(
        patch_size=patch_size, width=width, depth=depth, mlp_dim=mlp_dim,
        num_heads=num_heads, image_size=image_size, dropout=dropout,
        attention_dropout=attention_dropout, drop_path=drop_path, dtype=dtype,
        frozen_norm=frozen_norm, attention_impl=attention_impl, remat=remat,
        scan_blocks=scan_blocks)

  return create


for _variant in VARIANTS:
  for _patch in (16, 32):
    register(f"vit_{_variant}_patch{_patch}")(_factory(_variant, _patch))
