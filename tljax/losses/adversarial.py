"""Domain-adversarial pieces: gradient reversal, its warm-start schedule, the
domain classification loss (DANN; also used by CDAN, MDD and ADDA). The
discriminator network itself is `tljax.models.heads.DomainDiscriminator`.

Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016.
The flow, as in TLlib's `DomainAdversarialLoss`: features -> `gradient_reversal`
(coefficient from `warm_start_coeff(step)`) -> a discriminator on the
concatenated source + target batch -> `domain_adversarial_loss`. Minimising that
one loss trains the discriminator to tell the domains apart and, through the
reversed gradient, the feature extractor to confuse it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float


@jax.custom_vjp
def _scale_gradient(x: jax.Array, scale: jax.Array) -> jax.Array:
  return x


def _scale_gradient_forward(x, scale):
  return x, scale


def _scale_gradient_backward(scale, cotangent):
  # The scale is a schedule value, not something to learn: zero cotangent.
  return (scale * cotangent).astype(cotangent.dtype), jnp.zeros_like(scale)


_scale_gradient.defvjp(_scale_gradient_forward, _scale_gradient_backward)


def scale_gradient(x: jax.Array, scale: float | jax.Array) -> jax.Array:
  """Identity forward; multiplies the incoming gradient by `scale` backward.

  `scale` may be a traced scalar (a schedule value inside a jitted step); it
  gets no gradient.
  """
  return _scale_gradient(x, jnp.asarray(scale, float))


def gradient_reversal(x: jax.Array, coeff: float | jax.Array = 1.0) -> jax.Array:
  """Identity forward; multiplies the incoming gradient by `-coeff` backward.

  TLlib's `GradientReverseFunction`: `scale_gradient(x, -coeff)`.
  """
  return scale_gradient(x, -jnp.asarray(coeff, float))


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
  step = jnp.asarray(step, float)
  return lo + (hi - lo) * (2.0 / (1.0 + jnp.exp(-alpha * step / max_steps)) - 1.0)


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


def inverted_label_loss(d_target: jax.Array) -> jax.Array:
  """ADDA's encoder loss: the target features labelled as source.

      mean_j BCE(d^t_j, 1) = mean_j softplus(-d^t_j)

  The GAN loss with inverted labels (Tzeng et al., "Adversarial
  Discriminative Domain Adaptation", CVPR 2017, Eq. 9; TLlib's ADDA
  `DomainAdversarialLoss(d, 'source')`): the target encoder is trained to
  make the discriminator, which keeps its own loss, call target features
  source. Its gradient does not vanish when the discriminator is confident,
  unlike minus the discriminator's loss.

  Args:
    d_target: `(n_t,)` or `(n_t, 1)` discriminator logits on target features.
  """
  return jnp.mean(jax.nn.softplus(-_as_logit_vector(d_target)))


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
    "scale_gradient", "gradient_reversal", "warm_start_coeff",
    "domain_adversarial_loss", "domain_accuracy", "inverted_label_loss",
]
