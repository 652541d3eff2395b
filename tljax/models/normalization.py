"""Normalisation layers of domain generalisation: MixStyle and IBN-Net's instance-batch norm.

Both are options of the backbones that have stages (`small_cnn`, the ResNets),
not methods: a MixStyle layer after chosen stages (`mixstyle_layers`), and
IBN-Net's instance + batch normalisation in the first stages (`ibn`, and the
`resnet*_ibn_a` / `_b` backbones). The method trains them as any backbone
(ERM); `configs/mixstyle.py` and `configs/ibn.py` set them up as TLlib does.

- MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021;
  TLlib's `tllib.normalization.mixstyle`): in training, with probability
  `p` per layer and step, each example's feature statistics (channel mean
  and standard deviation over the spatial axes) are mixed with a partner's,
  `gamma = lam sigma(x) + (1 - lam) sigma(x~)`, `beta = lam mu(x) + (1 - lam)
  mu(x~)`, `lam ~ Beta(alpha, alpha)` per example, and the normalised
  features re-styled: `gamma (x - mu(x)) / sigma(x) + beta`. The statistics
  carry no gradient. Partners are a random permutation of the batch
  (`mode='random'`) or, as TLlib pairs them, an example of another labelled
  domain (`'crossdomain'`: within-domain ranks drawn at random, each example
  paired with the example of the same rank in the next domain present, so a
  two-domain batch gets a random one-to-one pairing across the domains). At
  evaluation the layer is the identity.
- IBN-Net (Pan et al., "Two at Once: Enhancing Learning and Generalization
  Capacities via IBN-Net", ECCV 2018; TLlib's `tllib.normalization.ibn`):
  `InstanceBatchNorm` normalises the first `ratio` of the channels per
  example (InstanceNorm, affine, no running statistics: PyTorch's
  `InstanceNorm2d(affine=True)`) and the rest with BatchNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models.layers import BatchNorm

MIXSTYLE_MODES = ("random", "crossdomain")


def style_statistics(x: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Per-example, per-channel mean and standard deviation of NHWC features
  over the spatial axes: `(B, 1, 1, C)` each, `sigma = sqrt(var + eps)` with
  the unbiased variance (PyTorch's `Tensor.var` default, as MixStyle uses)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  count = x.shape[1] * x.shape[2]
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.sum((x - mean) ** 2, axis=(1, 2), keepdims=True) / max(count - 1, 1)
  return mean, jnp.sqrt(var + eps)


def mix_styles(x: jax.Array, partner: jax.Array, weight: jax.Array,
               eps: float = 1e-6) -> jax.Array:
  """MixStyle's re-styling of NHWC features `x`: each example normalised by
  its own statistics and given `weight * own + (1 - weight) * partner's`
  (`partner`: `(B,)` indices into the batch; `weight`: `(B,)` in [0, 1]).
  The statistics are constants for the gradient (MixStyle detaches them)."""
  mean, sigma = jax.lax.stop_gradient(style_statistics(x, eps))
  normed = (x.astype(mean.dtype) - mean) / sigma
  weight = weight.reshape(-1, 1, 1, 1).astype(mean.dtype)
  mixed_mean = weight * mean + (1 - weight) * mean[partner]
  mixed_sigma = weight * sigma + (1 - weight) * sigma[partner]
  return (normed * mixed_sigma + mixed_mean).astype(x.dtype)


def cross_domain_partners(domains: jax.Array, rng: jax.Array) -> jax.Array:
  """`(B,)` partner of each example in another domain (see the module
  docstring): ranks within each domain are drawn at random, and example i is
  paired with the example of its rank in the domain present after its own
  (cyclically). An example whose rank the next domain lacks (domains of
  unequal counts) is its own partner: its style is kept."""
  priority = jax.random.uniform(rng, domains.shape)
  same = domains[:, None] == domains[None, :]
  rank = jnp.sum(same & (priority[None, :] < priority[:, None]), axis=1)
  # The cyclic successor domain: the smallest domain above one's own, else the smallest.
  big = jnp.max(domains) + 1
  gap = jnp.where(domains[None, :] > domains[:, None], domains[None, :] - domains[:, None],
                  domains[None, :] - domains[:, None] + big)
  candidate = (~same) & (rank[None, :] == rank[:, None])
  score = jnp.where(candidate, gap, 2 * big + 1)
  nearest = jnp.min(score, axis=1, keepdims=True)
  match = candidate & (score == nearest)
  has_partner = jnp.any(match, axis=1)
  return jnp.where(has_partner, jnp.argmax(match, axis=1), jnp.arange(domains.shape[0]))


class MixStyle(nn.Module):
  """MixStyle after a backbone stage (identity at evaluation).

  Attributes:
    p: probability of mixing at each call (TLlib's `mix_p`, 0.5).
    alpha: the Beta distribution's parameter (TLlib's `mix_alpha`, 0.1).
    mode: 'random' or 'crossdomain' (see the module docstring).
    eps: added to the variance.
  """

  p: float = 0.5
  alpha: float = 0.1
  mode: str = "crossdomain"
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               domains: jax.Array | None = None) -> jax.Array:
    if self.mode not in MIXSTYLE_MODES:
      raise ValueError(f"mixstyle_mode={self.mode!r}: choose one of {MIXSTYLE_MODES}")
    if not train or self.is_initializing():
      return x
    if self.mode == "crossdomain" and domains is None:
      raise ValueError("crossdomain MixStyle pairs examples of different labelled domains and "
                       "needs each example's domain: train with configs/mixstyle.py (method "
                       "'mixstyle'), or set backbone_kwargs.mixstyle_mode='random'")
    coin_rng, weight_rng, partner_rng = jax.random.split(self.make_rng("dropout"), 3)
    weight = jax.random.beta(weight_rng, self.alpha, self.alpha, (x.shape[0],))
    if self.mode == "random":
      partner = jax.random.permutation(partner_rng, x.shape[0])
    else:
      partner = cross_domain_partners(domains, partner_rng)
    apply = jax.random.uniform(coin_rng) < self.p
    return jnp.where(apply, mix_styles(x, partner, weight, self.eps), x)


class InstanceNorm(nn.Module):
  """Per-example, per-channel normalisation over the spatial axes with an
  affine map (PyTorch's `InstanceNorm2d(affine=True)`: biased variance,
  eps 1e-5, no running statistics), in at least fp32."""

  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    y = x.astype(compute)
    mean = jnp.mean(y, axis=(1, 2), keepdims=True)
    var = jnp.mean((y - mean) ** 2, axis=(1, 2), keepdims=True)
    y = (y - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype or x.dtype)


class InstanceBatchNorm(nn.Module):
  """IBN-Net's IBN-a layer: InstanceNorm on the first `int(C * ratio)`
  channels (`IN`), BatchNorm on the rest (`BN`), concatenated."""

  ratio: float = 0.5
  frozen: str = ""
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    half = int(x.shape[-1] * self.ratio)
    instance = InstanceNorm(dtype=self.dtype, name="IN")(x[..., :half])
    batch = BatchNorm(frozen=self.frozen, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                      param_dtype=jnp.float32, name="BN")(x[..., half:], train)
    return jnp.concatenate([instance.astype(batch.dtype), batch], axis=-1)
