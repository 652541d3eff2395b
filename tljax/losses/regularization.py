"""Fine-tuning regularisers: keep a fine-tuned network near what it started from.

TLlib's `tllib.regularization` (L2-SP, DELTA, BSS, Co-Tuning), as pure functions
of arrays and parameter trees; the methods in `tljax/methods` (`l2_sp`,
`delta`, `bss`, `co_tuning`) decide what they are applied to. Sums follow
TLlib's: over every parameter, over the batch and every feature-map element
where TLlib sums (`torch.norm(...) ** 2`), means where it averages.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tljax.losses._arrays import as_float, as_float_matrix


def _squared_norm(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return sum(jnp.sum(jnp.square(as_float(x))) for x in leaves)


def l2(params: Any) -> jax.Array:
  """`1/2 |w|^2` over every leaf of `params` (TLlib's `L2Regularization`)."""
  return 0.5 * _squared_norm(params)


def starting_point_l2(params: Any, starting_point: Any) -> jax.Array:
  """`1/2 |w - w0|^2` over every leaf (TLlib's `SPRegularization`).

  Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning
  with Convolutional Networks" (L2-SP), ICML 2018: `w0` is the pretrained
  starting point, held constant (no gradient reaches it).

  Args:
    params: the parameters being trained.
    starting_point: a tree of the same structure: their starting values.
  """
  differences = jax.tree.map(lambda w, w0: as_float(w) - jax.lax.stop_gradient(as_float(w0)),
                             params, starting_point)
  return 0.5 * _squared_norm(differences)


def behavioral_regularization(student: Sequence[jax.Array],
                              teacher: Sequence[jax.Array]) -> jax.Array:
  """`sum_j 1/2 |FM_j(w, x) - FM_j(w0, x)|^2`, summed over the batch and every
  element of each feature map (TLlib's `BehavioralRegularization`).

  Li et al., "DELTA: Deep Learning Transfer using Feature Map with Attention
  for Convolutional Networks", ICLR 2019, without attention. The teacher
  (starting network) maps get no gradient.

  Args:
    student: feature maps of the network being trained, one per layer.
    teacher: the starting network's maps on the same inputs, same shapes.
  """
  total = jnp.zeros((), jnp.float32)
  for fm_student, fm_teacher in zip(student, teacher, strict=True):
    difference = as_float(fm_student) - jax.lax.stop_gradient(as_float(fm_teacher))
    total = total + 0.5 * jnp.sum(jnp.square(difference))
  return total


def attention_behavioral_regularization(student: Sequence[jax.Array],
                                        teacher: Sequence[jax.Array],
                                        attention: Sequence[jax.Array]) -> jax.Array:
  """DELTA's feature-map distance with channel attention (TLlib's
  `AttentionBehavioralRegularization`):

      sum_j 1/2 sum_{b, c} C_j a_jc |FM_jbc(w, x) - FM_jbc(w0, x)|^2 / (H_j W_j)

  for channel-last maps `(B, H_j, W_j, C_j)` (or `(B, C_j)` for dense layers,
  `H_j W_j = 1`), where `a_j` is layer `j`'s channel attention (summing to 1,
  so `C_j a_jc` is 1 on average: uniform attention is the plain distance
  divided by the number of positions).

  Args:
    student: feature maps of the network being trained, channels last.
    teacher: the starting network's maps, same shapes (no gradient).
    attention: `(C_j,)` weights per layer (`channel_attention`).
  """
  total = jnp.zeros((), jnp.float32)
  for fm_student, fm_teacher, weights in zip(student, teacher, attention, strict=True):
    difference = as_float(fm_student) - jax.lax.stop_gradient(as_float(fm_teacher))
    channels = difference.shape[-1]
    positions = int(np.prod(difference.shape[1:-1]))
    squared = jnp.sum(jnp.square(difference.reshape(difference.shape[0], positions, channels)),
                      axis=1)                                             # (B, C)
    weights = jax.lax.stop_gradient(as_float(weights))
    total = total + 0.5 * jnp.sum(channels * weights * squared / positions)
  return total


def channel_attention(loss_increase: jax.Array, *, temperature: float = 5.0) -> jax.Array:
  """DELTA's channel attention from each channel's importance (TLlib's
  `calculate_channel_attention`): the increases of a classifier's loss when
  each channel's filter is zeroed, standardised over the layer's channels
  (mean 0, standard deviation 1, numpy's population std) and passed through
  `softmax(z / temperature)` (TLlib: 5). Channels whose removal hurts more
  weigh more; constant importances give uniform attention.

  Args:
    loss_increase: `(C,)` loss with channel `c` zeroed minus the loss intact.
    temperature: the softmax temperature.
  """
  x = as_float(loss_increase)
  std = jnp.std(x)
  z = (x - jnp.mean(x)) / jnp.where(std > 0, std, 1.0)
  return jax.nn.softmax(z / temperature)


def batch_spectral_shrinkage(features: jax.Array, *, k: int = 1) -> jax.Array:
  """`sum_{i<=k} sigma_{-i}^2`: the `k` smallest squared singular values of the
  `(b, d)` feature matrix (of its `min(b, d)` singular values), TLlib's
  `BatchSpectralShrinkage`.

  Chen et al., "Catastrophic Forgetting Meets Negative Transfer: Batch
  Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019 (TLlib: `k =
  1`, weight 0.001). The squared singular values are the eigenvalues of the
  smaller Gram matrix (`F F^T` or `F^T F`): on CPU the gradient of XLA's SVD of
  a 48 x 256 batch takes ~100x as long as the symmetric eigenproblem. The
  price is an absolute error of about `eps sigma_max^2` on each (the Gram
  matrix squares the condition number), far below what the penalty's weight
  makes matter; eigenvalues rounded below zero count as zero.
  """
  x = as_float_matrix(features)
  if not 0 < k <= min(x.shape):
    raise ValueError(f"BSS penalises k of the min{x.shape} = {min(x.shape)} singular values of "
                     f"the feature batch; got k={k}")
  gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
  eigenvalues = jnp.linalg.eigvalsh(gram)  # ascending
  return jnp.sum(jnp.maximum(eigenvalues[:k], 0.0))


def co_tuning_loss(source_logits: jax.Array, relationship_targets: jax.Array) -> jax.Array:
  """`mean_b sum_s -p(y_s | y_t,b) log softmax(z_b)_s` (TLlib's `CoTuningLoss`).

  You et al., "Co-Tuning for Transfer Learning", NeurIPS 2020: the source
  head's logits `z` on target examples are trained towards the source-class
  distribution their target label implies (`relationship[y_t]`, see
  `category_relationship`).

  Args:
    source_logits: `(b, C_s)` logits of the pretrained model's source head.
    relationship_targets: `(b, C_s)` rows of the relationship for the batch's
      target labels.
  """
  log_probs = jax.nn.log_softmax(as_float(source_logits), axis=-1)
  return jnp.mean(jnp.sum(-jax.lax.stop_gradient(as_float(relationship_targets)) * log_probs,
                          axis=-1))


def category_relationship(source_probabilities: jax.Array, labels: jax.Array, *,
                          num_classes: int) -> jax.Array:
  """`p(y_s | y_t)`: per target class, the mean of the source model's
  probabilities over that class's examples (TLlib's `Relationship`, its
  "direct approach"). A class without examples gets the uniform
  distribution (TLlib: the mean of an empty set, nan).

  Args:
    source_probabilities: `(N, C_s)` softmax of the starting model's source
      head on the target training examples.
    labels: `(N,)` their target labels in `[0, num_classes)`.
    num_classes: `C_t`.

  Returns:
    `(C_t, C_s)`, each row a distribution.
  """
  probabilities = as_float_matrix(source_probabilities)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=probabilities.dtype)
  counts = jnp.sum(one_hot, axis=0)[:, None]
  sums = one_hot.T @ probabilities
  uniform = jnp.full_like(sums, 1.0 / probabilities.shape[1])
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), uniform)


__all__ = ["l2", "starting_point_l2", "behavioral_regularization",
           "attention_behavioral_regularization", "channel_attention",
           "batch_spectral_shrinkage", "co_tuning_loss", "category_relationship"]
