"""Self-training losses: confidence-thresholded pseudo-labels (Pseudo-Label,
FixMatch) and the mean teacher's consistency and class-balance terms.

- Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method
  for Deep Neural Networks", ICML workshops 2013 (TLlib's
  `ConfidenceBasedSelfTrainingLoss`, also FixMatch's unlabelled loss: Sohn et
  al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
  Confidence", NeurIPS 2020).
- French et al., "Self-ensembling for visual domain adaptation", ICLR 2018
  (TLlib's `L2ConsistencyLoss` and `ClassBalanceLoss`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tljax.losses._arrays import as_float

# PyTorch's binary cross-entropy clamps log terms at -100.
_TORCH_BCE_LOG_MIN = -100.0


def confidence_self_training_loss(logits: jax.Array, teacher_logits: jax.Array, *,
                                  threshold: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross-entropy with the teacher's confident predictions as labels.

      p = softmax(stop_gradient(teacher_logits)),  y_i = argmax_c p_ic
      m_i = 1[max_c p_ic > threshold]
      loss = mean_i m_i CE(logits_i, y_i)

  The mean is over the whole batch, masked rows counting as 0 (TLlib's
  `ConfidenceBasedSelfTrainingLoss`, FixMatch's `L_u`).

  Args:
    logits: `(n, C)` predictions being trained (e.g. on a strong augmentation).
    teacher_logits: `(n, C)` predictions the labels come from (the same
      logits for Pseudo-Label, a weak augmentation for FixMatch).
    threshold: confidence above which a pseudo-label is used.

  Returns:
    `(loss, mask (n,) float, pseudo_labels (n,) int32)`.
  """
  logits = as_float(logits)
  probs = jax.nn.softmax(jax.lax.stop_gradient(as_float(teacher_logits)), axis=-1)
  confidence = jnp.max(probs, axis=-1)
  pseudo_labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  mask = (confidence > threshold).astype(logits.dtype)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, pseudo_labels)
  return jnp.mean(per_example * mask), mask, pseudo_labels


def l2_consistency_loss(probs: jax.Array, teacher_probs: jax.Array,
                        mask: jax.Array | None = None, *, reduction: str = "mean") -> jax.Array:
  """`mean_i m_i ||p_i - q_i||^2`: TLlib's `L2ConsistencyLoss` (mean reduction;
  `reduction='sum'`: the sum over the batch, its semi-supervised mean teacher's).

  Args:
    probs: `(n, C)` student probabilities.
    teacher_probs: `(n, C)` teacher probabilities (not detached here: the
      caller decides what gets a gradient).
    mask: optional `(n,)` weights.
    reduction: 'mean' or 'sum' over the batch.
  """
  if reduction not in ("mean", "sum"):
    raise ValueError(f"reduction={reduction!r}: choose 'mean' or 'sum'")
  distances = jnp.sum(jnp.square(as_float(probs) - as_float(teacher_probs)), axis=-1)
  if mask is not None:
    distances = distances * mask
  return jnp.mean(distances) if reduction == "mean" else jnp.sum(distances)


def class_balance_loss(probs: jax.Array) -> jax.Array:
  """Binary cross-entropy between the batch-mean prediction and the uniform
  distribution: TLlib's `ClassBalanceLoss`.

      pbar = mean_i p_i,  u = 1 / C
      loss = -mean_c [u log pbar_c + (1 - u) log(1 - pbar_c)]

  with PyTorch's `binary_cross_entropy` clamping of each log at -100.

  Args:
    probs: `(n, C)` probabilities.
  """
  mean = jnp.mean(as_float(probs), axis=0)
  uniform = 1.0 / mean.shape[-1]
  log_p = jnp.maximum(jnp.log(mean), _TORCH_BCE_LOG_MIN)
  log_not_p = jnp.maximum(jnp.log1p(-mean), _TORCH_BCE_LOG_MIN)
  return -jnp.mean(uniform * log_p + (1.0 - uniform) * log_not_p)


__all__ = ["confidence_self_training_loss", "l2_consistency_loss", "class_balance_loss"]
