"""Domain-adversarial pieces: gradient reversal, its warm-start schedule, the
domain discriminator and its loss (DANN; also used by CDAN and MDD).

Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.
The flow, as in TLlib's `DomainAdversarialLoss`: features -> `gradient_reversal`
(coefficient from `warm_start_coeff(step)`) -> `DomainDiscriminator` on the
concatenated source + target batch -> `domain_adversarial_loss`. Minimising that
one loss trains the discriminator to tell the domains apart and, through the
reversed gradient, the feature extractor to confuse it.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float
from tljax.models.layers import BatchNorm, torch_linear_init


@jax.custom_vjp
def _reverse_gradient(x: jax.Array, coeff: jax.Array) -> jax.Array:
  return x


def _reverse_gradient_forward(x, coeff):
  return x, coeff


def _reverse_gradient_backward(coeff, cotangent):
  # The coefficient is a schedule value, not something to learn: zero cotangent.
  return (-coeff * cotangent).astype(cotangent.dtype), jnp.zeros_like(coeff)


_reverse_gradient.defvjp(_reverse_gradient_forward, _reverse_gradient_backward)


def gradient_reversal(x: jax.Array, coeff: float | jax.Array = 1.0) -> jax.Array:
  """Identity forward; multiplies the incoming gradient by `-coeff` backward.

  TLlib's `GradientReverseFunction`. `coeff` may be a traced scalar (e.g.
  `warm_start_coeff(step)` inside a jitted step); it gets no gradient.
  """
  return _reverse_gradient(x, jnp.asarray(coeff, jnp.float32))


def warm_start_coeff(step: int | jax.Array,
                     *,
                     alpha: float = 1.0,
                     lo: float = 0.0,
                     hi: float = 1.0,
                     max_steps: int = 1000) -> jax.Array:
  """TLlib's `WarmStartGradientReverseLayer` coefficient at `step`.

      lo + (hi - lo) * (2 / (1 + exp(-alpha * step / max_steps)) - 1)

  It rises from `lo` at step 0 towards `hi`. TLlib's DANN and CDAN layers
  step automatically after each forward pass, so training step `i` (from 0)
  uses `step = i`; its MDD uses `hi = 0.1`. Works on traced steps.
  """
  step = jnp.asarray(step, jnp.float32)
  return lo + (hi - lo) * (2.0 / (1.0 + jnp.exp(-alpha * step / max_steps)) - 1.0)


class DomainDiscriminator(nn.Module):
  """TLlib's `DomainDiscriminator(batch_norm=True)`, returning logits.

  `(Dense -> BatchNorm -> ReLU) x len(hidden_sizes) -> Dense(1)`; TLlib's
  final sigmoid is left to `domain_adversarial_loss`, which works on logits.
  BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. flax 0.9; eps 1e-5).
  Call it on the concatenated source + target batch, as TLlib does, so the
  batch statistics cover both domains.

  Attributes:
    hidden_sizes: widths of the hidden layers (TLlib: two of `hidden_size`,
      1024 in its examples).
    dtype: compute dtype; the logits are returned in float32.
  """

  hidden_sizes: Sequence[int] = (1024, 1024)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """`(n, *)` features -> `(n,)` domain logits (source is label 1)."""
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden_sizes):
      init = torch_linear_init(x.shape[-1])
      x = nn.Dense(width, dtype=self.dtype, kernel_init=init, bias_init=init,
                   name=f"linear{i}")(x)
      x = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")(x, train)
      x = nn.relu(x)
    init = torch_linear_init(x.shape[-1])
    logits = nn.Dense(1, dtype=self.dtype, kernel_init=init, bias_init=init, name="output")(x)
    return logits[:, 0].astype(jnp.float32)


def _as_logit_vector(logits: jax.Array) -> jax.Array:
  return as_float(logits).reshape(-1)


def domain_adversarial_loss(d_source: jax.Array,
                            d_target: jax.Array,
                            *,
                            source_weights: jax.Array | None = None,
                            target_weights: jax.Array | None = None) -> jax.Array:
  """DANN's domain classification loss on discriminator logits.

      0.5 * (mean_i w^s_i BCE(d^s_i, 1) + mean_j w^t_j BCE(d^t_j, 0))

  with `BCE(z, 1) = softplus(-z) = -log sigmoid(z)` and `BCE(z, 0) =
  softplus(z)`. This is TLlib's `DomainAdversarialLoss` (source label 1, and
  PyTorch's weighted BCE with mean reduction: `mean(w * l)`, not divided by
  `sum(w)`), computed stably from logits. TLlib applies `F.binary_cross_entropy`
  to sigmoid outputs, which in float32 round to exactly 0 or 1 once
  `|logit|` exceeds ~17 and are then clamped to a loss of 100 with zero
  gradient; here the exact value is returned instead.

  CDAN+E: with `w = entropy_weights(concatenated probs)` split into its source
  and target halves, this equals TLlib's `ConditionalDomainAdversarialLoss`
  weighted BCE over the concatenated batch (equal batch sizes).

  Args:
    d_source: `(n_s,)` or `(n_s, 1)` logits on source samples.
    d_target: `(n_t,)` or `(n_t, 1)` logits on target samples.
    source_weights: optional `(n_s,)` per-sample weights.
    target_weights: optional `(n_t,)` per-sample weights.
  """
  d_source, d_target = _as_logit_vector(d_source), _as_logit_vector(d_target)
  source_losses = jax.nn.softplus(-d_source)
  target_losses = jax.nn.softplus(d_target)
  if source_weights is not None:
    source_losses = source_losses * jnp.reshape(source_weights, (-1,))
  if target_weights is not None:
    target_losses = target_losses * jnp.reshape(target_weights, (-1,))
  return 0.5 * (jnp.mean(source_losses) + jnp.mean(target_losses))


def domain_accuracy(d_source: jax.Array, d_target: jax.Array) -> jax.Array:
  """Discriminator accuracy, `0.5 * (acc_source + acc_target)`, as a fraction.

  TLlib's DANN reports the same average (in percent): a source sample counts
  as correct when `sigmoid(logit) >= 0.5`, i.e. `logit >= 0`.
  """
  d_source, d_target = _as_logit_vector(d_source), _as_logit_vector(d_target)
  source_correct = jnp.mean((d_source >= 0).astype(jnp.float32))
  target_correct = jnp.mean((d_target < 0).astype(jnp.float32))
  return 0.5 * (source_correct + target_correct)


__all__ = [
    "gradient_reversal", "warm_start_coeff", "DomainDiscriminator",
    "domain_adversarial_loss", "domain_accuracy",
]
