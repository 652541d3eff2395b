"""Minimum Class Confusion (Jin et al., "Minimum Class Confusion for Versatile
Domain Adaptation", ECCV 2020), TLlib's `MinimumClassConfusionLoss`.

A target-only regulariser on the classifier's logits; the whole network
minimises it, alone or on top of another method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float
from tljax.losses.entropy import entropy



def mcc(logits: jax.Array, *, temperature: float) -> jax.Array:
  """MCC loss on target logits.

      Y = softmax(logits / T)                                   (n, C)
      w_i = 1 + exp(-H(Y_i)),  w <- n w / sum(w)                 (no gradient)
      M = Y^T diag(w) Y                                          (C, C)
      M_jk <- M_jk / sum_l M_kl                                   (TLlib)
      loss = (sum_jk M_jk - sum_j M_jj) / C

  `H` is TLlib's entropy (`log(p + 1e-5)`). TLlib divides by
  `torch.sum(M, dim=1)`, which broadcasts along the last axis; `M` is
  symmetric, so that is the paper's per-class normalisation up to a
  transpose, which changes neither sum nor trace.

  Args:
    logits: `(n, C)` target logits.
    temperature: `T`.
  """
  logits = as_float(logits)
  batch_size, num_classes = logits.shape
  predictions = jax.nn.softmax(logits / temperature, axis=-1)
  weights = 1.0 + jnp.exp(-jax.lax.stop_gradient(entropy(predictions)))
  weights = batch_size * weights / jnp.sum(weights)
  confusion = jnp.matmul((predictions * weights[:, None]).T, predictions,
                         precision=jax.lax.Precision.HIGHEST)
  confusion = confusion / jnp.sum(confusion, axis=1)
  return (jnp.sum(confusion) - jnp.trace(confusion)) / num_classes


__all__ = ["mcc"]
