"""OSBP's unknown-class boundary (Saito et al., "Open Set Domain Adaptation by
Backpropagation", ECCV 2018).

The classifier has `K + 1` outputs, the last one "unknown". On target
examples the classifier is trained to put probability `t` on unknown, and the
feature extractor, through gradient reversal, to move each example away from
that boundary: towards a known class (more than `t`) or towards unknown. The
method (`tljax/methods/osbp.py`) places the reversal between the features
and the head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float


def unknown_class_bce(logits: jax.Array, *, t: float = 0.5) -> jax.Array:
  """Binary cross-entropy of the unknown probability against `t`.

      p = softmax(logits)[:, K]   (the last output)
      L = -mean(t log(p + 1e-6)) - mean((1 - t) log(1 - p + 1e-6))

  (Saito et al. 2018, Eq. 3; TLlib's `UnknownClassBinaryCrossEntropy`, with
  its 1e-6 offsets and `t = 0.5`.)

  Args:
    logits: `(n, K + 1)` outputs on target examples.
    t: the boundary.
  """
  unknown = jax.nn.softmax(as_float(logits), axis=-1)[:, -1]
  return (-jnp.mean(t * jnp.log(unknown + 1e-6))
          - jnp.mean((1.0 - t) * jnp.log(1.0 - unknown + 1e-6)))


__all__ = ["unknown_class_bce"]
