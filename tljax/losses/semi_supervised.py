"""Losses and schedules of the semi-supervised methods (TLlib's `tllib/self_training`).

Pure functions of arrays; the methods in `tljax/methods` (pi_model, uda,
flexmatch, debiasmatch, dst, self_tuning, noisy_student, mean_teacher) join
them into their steps. The confidence-thresholded pseudo-label loss shared by
FixMatch, FlexMatch, DebiasMatch and DST is `self_training.confidence_self_training_loss`.

- Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017
  (the sigmoid warm-up of the Pi-model and mean teacher).
- Xie et al., "Unsupervised Data Augmentation for Consistency Training",
  NeurIPS 2020 (the strong-weak consistency, training signal annealing).
- Zhang et al., "FlexMatch: Boosting Semi-Supervised Learning with Curriculum
  Pseudo Labeling", NeurIPS 2021 (per-class thresholds).
- Wang et al., "Debiased Learning from Naturally Imbalanced Pseudo-Labels",
  CVPR 2022 (DebiasMatch's logit adjustment).
- Chen et al., "Debiased Self-Training for Semi-Supervised Learning",
  NeurIPS 2022 (DST's worst-case estimation).
- Wang et al., "Self-Tuning for Data-Efficient Deep Learning", ICML 2021
  (the pseudo-group contrastive loss and its per-class queue).
- Xie et al., "Self-training with Noisy Student improves ImageNet
  classification", CVPR 2020 (the soft-label distillation loss).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float
from tljax.losses.mdd import mdd

TSA_SCHEDULES = ("linear", "log", "exp")


def sigmoid_warm_up(step: int | jax.Array, warm_up_steps: int, interval: int = 1) -> jax.Array:
  """TLlib's `sigmoid_warm_up` (Laine & Aila's ramp-up), counted in steps:

      e = min(floor(step / interval) * interval, W),  w = exp(-5 (1 - e / W)^2)

  1 when `W = warm_up_steps` is 0. TLlib evaluates it per epoch (`interval`
  = iterations per epoch, 500), with `W` = 10 epochs; `interval` 0 or 1
  changes the weight every step.
  """
  if warm_up_steps <= 0:
    return jnp.ones((), float)
  interval = max(int(interval), 1)
  elapsed = jnp.floor(jnp.asarray(step, float) / interval) * interval
  progress = 1.0 - jnp.clip(elapsed, 0.0, warm_up_steps) / warm_up_steps
  return jnp.exp(-5.0 * progress * progress)


def strong_weak_consistency(strong_logits: jax.Array, weak_logits: jax.Array, *,
                            threshold: float, temperature: float,
                            sharpen_target: bool = False) -> tuple[jax.Array, jax.Array]:
  """UDA's consistency between a strong and a weak view of unlabelled examples,
  TLlib's `StrongWeakConsistencyLoss`:

      q_i = softmax(stop_gradient(weak_i)),  m_i = 1[max_c q_ic > threshold]
      KL_i = sum_c q_ic (log q_ic - log softmax(strong_i / T)_c)
      loss = sum_i m_i KL_i / max(sum_i m_i, 1)

  TLlib divides the *strong* logits by the temperature `T`. The UDA paper
  sharpens the target instead (`sharpen_target=True`: `q_i =
  softmax(weak_i / T)`, the strong logits as they are); the mask reads the
  unsharpened confidence in both.

  Args:
    strong_logits: `(n, C)` logits of the strong views (trained).
    weak_logits: `(n, C)` logits of the weak views (the targets; no gradient).
    threshold: confidence above which an example counts.
    temperature: `T`.
    sharpen_target: the paper's sharpening instead of TLlib's.

  Returns:
    `(loss, mask (n,))`.
  """
  strong_logits, weak_logits = as_float(strong_logits), jax.lax.stop_gradient(
      as_float(weak_logits))
  confidence = jnp.max(jax.nn.softmax(weak_logits, axis=-1), axis=-1)
  mask = (confidence > threshold).astype(strong_logits.dtype)
  if sharpen_target:
    target = jax.nn.softmax(weak_logits / temperature, axis=-1)
    log_probs = jax.nn.log_softmax(strong_logits, axis=-1)
  else:
    target = jax.nn.softmax(weak_logits, axis=-1)
    log_probs = jax.nn.log_softmax(strong_logits / temperature, axis=-1)
  kl = jnp.sum(jax.scipy.special.xlogy(target, target) - target * log_probs, axis=-1)
  return jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0), mask


def tsa_threshold(step: int | jax.Array, total_steps: int, num_classes: int,
                  schedule: str) -> jax.Array:
  """UDA's training signal annealing threshold at `step`:

      eta_t = alpha_t (1 - 1/C) + 1/C,  p = step / total_steps
      alpha_t = p (linear), 1 - exp(-5 p) (log), exp(5 (p - 1)) (exp)
  """
  if schedule not in TSA_SCHEDULES:
    raise ValueError(f"TSA schedule {schedule!r}: choose one of {TSA_SCHEDULES}")
  progress = jnp.asarray(step, float) / total_steps
  alpha = {"linear": lambda p: p, "log": lambda p: 1.0 - jnp.exp(-5.0 * p),
           "exp": lambda p: jnp.exp(5.0 * (p - 1.0))}[schedule](progress)
  return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def tsa_cross_entropy(logits: jax.Array, labels: jax.Array,
                      threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy over the labelled examples whose correct-class probability
  is at most `threshold` (UDA's training signal annealing: examples the model
  already fits leave the loss), averaged over those kept:

      k_i = 1[softmax(x_i)_{y_i} <= eta],  loss = sum_i k_i CE_i / max(sum_i k_i, 1)

  Returns `(loss, kept (n,))`.
  """
  logits = as_float(logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  correct = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  kept = (jax.lax.stop_gradient(jnp.exp(correct)) <= threshold).astype(logits.dtype)
  return -jnp.sum(correct * kept) / jnp.maximum(jnp.sum(kept), 1.0), kept


def flexmatch_thresholds(predictions: jax.Array, num_classes: int, *, threshold: float,
                         warmup: bool) -> jax.Array:
  """FlexMatch's per-class thresholds from each unlabelled example's latest
  confident prediction (`predictions`, -1 where none yet), TLlib's
  `DynamicThresholdingModule` with its convex mapping `M(x) = x / (2 - x)`:

      sigma(c) = #{i: predictions_i = c}
      beta(c)  = sigma(c) / max(max_c' sigma(c'), [#unused if warmup])
      T(c)     = threshold * M(beta(c))

  and, as TLlib's, `beta = 0` while every example holds the same value (all
  unused at the start).

  Returns:
    `(num_classes,)` thresholds.
  """
  counts = jnp.bincount(predictions + 1, length=num_classes + 1)
  unused, per_class = counts[0], counts[1:]
  largest = jnp.max(per_class)
  if warmup:
    largest = jnp.maximum(largest, unused)
  all_same = jnp.max(counts) == predictions.shape[0]
  status = jnp.where(all_same, 0.0, per_class / jnp.maximum(largest, 1))
  return threshold * status / (2.0 - status)


def worst_case_estimation(labelled_logits: jax.Array, labelled_adv_logits: jax.Array,
                          unlabelled_logits: jax.Array, unlabelled_adv_logits: jax.Array, *,
                          eta_prime: float) -> jax.Array:
  """DST's worst-case estimation loss, TLlib's `WorstCaseEstimationLoss`:

      eta' mean_l CE(h_adv(x_l), argmax h(x_l))
        - mean_u shift_log(1 - softmax(h_adv(x_u)))[argmax h(x_u)]

  the worst head predicting the main head's labels on labelled data and
  avoiding them on unlabelled data; it is MDD's `-D` with margin `eta'`.
  """
  return -mdd(labelled_logits, labelled_adv_logits, unlabelled_logits, unlabelled_adv_logits,
              margin=eta_prime)


def pseudo_group_contrastive(query: jax.Array, key: jax.Array, queue: jax.Array,
                             labels: jax.Array, *, num_classes: int,
                             temperature: float) -> jax.Array:
  """Self-Tuning's pseudo-group contrastive loss, TLlib's `SelfTuning` forward
  with `KLDivLoss(reduction='batchmean')`:

      s_i = [q_i . k_i, q_i . Q_{:, j} for every queued key j] / T
      loss = mean_i KL(t_i || softmax(s_i)),  t_i = 1/(K+1) on the key and the
             K queued keys of class labels_i, 0 elsewhere

  (TLlib orders the columns positives first; the loss does not depend on it.)

  Args:
    query: `(n, d)` unit-norm query projections (trained).
    key: `(n, d)` unit-norm key projections (no gradient).
    queue: `(d, C * K)` unit-norm queued keys, class `c` in columns `cK..cK+K-1`.
    labels: `(n,)` classes (true or pseudo).
    num_classes: `C`.
    temperature: `T`.
  """
  query = as_float(query)
  key, queue = jax.lax.stop_gradient(as_float(key)), jax.lax.stop_gradient(as_float(queue))
  queue_size = queue.shape[1] // num_classes
  positive = jnp.sum(query * key, axis=-1, keepdims=True)
  log_probs = jax.nn.log_softmax(jnp.concatenate([positive, query @ queue], axis=-1)
                                 / temperature, axis=-1)
  per_class = log_probs[:, 1:].reshape(query.shape[0], num_classes, queue_size)
  own = jnp.take_along_axis(per_class, labels[:, None, None], axis=1)[:, 0]
  group = queue_size + 1
  positives = (log_probs[:, 0] + jnp.sum(own, axis=-1)) / group
  return jnp.mean(-math.log(group) - positives)


def enqueue_per_class(queue: jax.Array, pointers: jax.Array, keys: jax.Array,
                      labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Self-Tuning's `_dequeue_and_enqueue`, one example after another: example
  `i` replaces column `labels_i K + pointers[labels_i]` of its class's K
  columns, and that class's pointer moves on by one (mod K).

  Done at once: the `r`-th example of class `c` in the batch goes to column
  `cK + (pointers[c] + r) mod K`, unless a later example of its class
  overwrites it (K or more of them follow), as in the sequential loop.

  Args:
    queue: `(d, C * K)`.
    pointers: `(C,)` int32, each class's next column (0..K-1).
    keys: `(n, d)`.
    labels: `(n,)`.

  Returns:
    The new `(queue, pointers)`.
  """
  num_classes = pointers.shape[0]
  queue_size = queue.shape[1] // num_classes
  same = labels[:, None] == labels[None, :]
  order = jnp.arange(labels.shape[0])
  earlier = jnp.sum(same & (order[None, :] < order[:, None]), axis=1)
  later = jnp.sum(same & (order[None, :] > order[:, None]), axis=1)
  columns = labels * queue_size + (pointers[labels] + earlier) % queue_size
  # Columns past the end are dropped: the examples a later one overwrites.
  columns = jnp.where(later < queue_size, columns, queue.shape[1])
  queue = queue.at[:, columns].set(keys.T.astype(queue.dtype), mode="drop")
  counts = jnp.bincount(labels, length=num_classes)
  return queue, ((pointers + counts) % queue_size).astype(pointers.dtype)


def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array, *,
                       temperature: float) -> jax.Array:
  """Noisy Student's distillation loss, TLlib's `noisy_student.py`:

      loss = mean_i -sum_c softmax(t_i / T)_c log softmax(s_i / T)_c

  with the teacher's logits `t` fixed and the student's `s` trained.
  """
  target = jax.nn.softmax(jax.lax.stop_gradient(as_float(teacher_logits)) / temperature, axis=-1)
  log_probs = jax.nn.log_softmax(as_float(logits) / temperature, axis=-1)
  return jnp.mean(-jnp.sum(target * log_probs, axis=-1))


__all__ = ["sigmoid_warm_up", "strong_weak_consistency", "tsa_threshold", "tsa_cross_entropy",
           "flexmatch_thresholds", "worst_case_estimation", "pseudo_group_contrastive",
           "enqueue_per_class", "soft_cross_entropy", "TSA_SCHEDULES"]
