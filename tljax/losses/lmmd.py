"""Local MMD (Zhu et al., "Deep Subdomain Adaptation Network for Image
Classification", IEEE TNNLS 2020): the loss of DSAN.

MMD between the source and target distributions of each class (subdomain),
averaged over the classes present in both batches. Source samples are
weighted by their one-hot labels, target samples by their predicted class
probabilities, each normalised within its class; the kernel is the authors'
sum of Gaussians whose bandwidths are powers of `kernel_mul` around the mean
pairwise squared distance of the joint batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float, as_float_matrix
from tljax.losses.kernels import pairwise_squared_distances


def lmmd_weights(source_labels: jax.Array, target_probs: jax.Array, *,
                 num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Per-class sample weights `(W_s (n_s, C), W_t (n_t, C))` of local MMD.

      W_s[i, c] = 1[y_i = c] / sum_j 1[y_j = c]       (one-hot, normalised per class)
      W_t[j, c] = p_jc / sum_l p_lc                    (predictions, normalised per class)

  divided by `sqrt(K)` and with the columns of classes that are not both
  among the source labels and the target's arg-max predictions set to 0,
  `K` being the number of such classes (the authors' `cal_weight`: their
  `W W^T / K` products are then `W W^T` here). No gradient flows through
  them (the authors compute them in numpy).

  Args:
    source_labels: `(n_s,)` integer labels.
    target_probs: `(n_t, C)` target class probabilities.
    num_classes: `C`.
  """
  target_probs = jax.lax.stop_gradient(as_float(target_probs))
  source_onehot = jax.nn.one_hot(source_labels, num_classes, dtype=target_probs.dtype)
  source_count = jnp.sum(source_onehot, axis=0)
  target_mass = jnp.sum(target_probs, axis=0)
  target_predicted = jnp.sum(jax.nn.one_hot(jnp.argmax(target_probs, axis=-1), num_classes,
                                            dtype=target_probs.dtype), axis=0)
  shared = (source_count > 0) & (target_predicted > 0)
  num_shared = jnp.sum(shared)
  scale = jnp.where(shared, 1.0 / jnp.sqrt(jnp.maximum(num_shared, 1)), 0.0)
  source_weights = source_onehot / jnp.maximum(source_count, 1.0) * scale
  target_weights = target_probs / jnp.where(target_mass > 0, target_mass, 1.0) * scale
  return source_weights, target_weights


def lmmd(source_features: jax.Array, target_features: jax.Array, source_labels: jax.Array,
         target_probs: jax.Array, *, num_classes: int, kernel_mul: float = 2.0,
         kernel_num: int = 5) -> jax.Array:
  """Local MMD with class-conditional weights (the DSAN authors' `LMMD_loss`).

      loss = sum_ij Wss_ij k(s_i, s_j) + sum_ij Wtt_ij k(t_i, t_j) - 2 sum_ij Wst_ij k(s_i, t_j)
      Wss = W_s W_s^T,  Wtt = W_t W_t^T,  Wst = W_s W_t^T          (`lmmd_weights`)
      k(x, y) = sum_{q=0}^{Q-1} exp(-||x - y||^2 / (b mul^(q - floor(Q/2))))
      b = sum_{u != v} ||z_u - z_v||^2 / (n^2 - n)    over the joint batch z = [s; t]

  `Q = kernel_num`, `mul = kernel_mul`; `b` carries no gradient (the authors
  detach it). Written with matrix products of `(n, C)` weights and `(n, n)`
  kernels: no `(n, n, d)` temporary. 0 when no class is shared.

  Args:
    source_features: `(n_s, d)`.
    target_features: `(n_t, d)`.
    source_labels: `(n_s,)` integer labels.
    target_probs: `(n_t, C)` target predictions (softmax of the logits).
    num_classes: `C`.
    kernel_mul: ratio between consecutive bandwidths (authors: 2).
    kernel_num: number of Gaussian kernels (authors: 5).
  """
  source = as_float_matrix(source_features)
  target = as_float_matrix(target_features)
  joint = jnp.concatenate([source, target])
  distances = pairwise_squared_distances(joint)
  n = joint.shape[0]
  bandwidth = jax.lax.stop_gradient(jnp.sum(distances) / (n * n - n))
  bandwidth = bandwidth / kernel_mul ** (kernel_num // 2)
  kernels = sum(jnp.exp(-distances / (bandwidth * kernel_mul ** q)) for q in range(kernel_num))
  source_weights, target_weights = lmmd_weights(source_labels, target_probs,
                                                num_classes=num_classes)
  weights = jnp.concatenate([source_weights, -target_weights])  # (n, C): signs give -2 Wst
  # sum_ij (w_i . w_j) K_ij = trace(W^T K W), one (n, n) x (n, C) product.
  return jnp.sum(weights * jnp.matmul(kernels, weights, precision=jax.lax.Precision.HIGHEST))


__all__ = ["lmmd", "lmmd_weights"]
