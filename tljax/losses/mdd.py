"""Margin Disparity Discrepancy (Zhang et al., "Bridging Theory and Algorithm
for Domain Adaptation", ICML 2019) for classification and regression, TLlib's
`ClassificationMarginDisparityDiscrepancy` and
`RegressionMarginDisparityDiscrepancy` (the "DD" of TLlib's image regression).

The network has a main head `h` and an adversarial head `h'` on the same
features; `h'` sits behind `gradient_reversal` (TLlib: warm start with
`hi = 0.1`). The value returned is TLlib's `D`. TLlib's MDD example trains on
`cls_loss - trade_off * D`: the adversarial head descends `-D`, i.e. maximises
the discrepancy, while the reversed gradient makes the feature extractor
minimise `D`. The main head enters only through its argmax, so `D` gives it no
gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tljax.losses._arrays import as_float


def shift_log(x: jax.Array, offset: float = 1e-6) -> jax.Array:
  """TLlib's `shift_log`: `log(min(x + offset, 1))`, finite at `x = 0`."""
  return jnp.log(jnp.minimum(x + offset, 1.0))


def mdd(source_logits: jax.Array,
        source_adv_logits: jax.Array,
        target_logits: jax.Array,
        target_adv_logits: jax.Array,
        *,
        margin: float) -> jax.Array:
  """Classification MDD, with TLlib's signs:

      D = -margin * mean_i CE(h'(x^s_i), argmax h(x^s_i))
          + mean_j shift_log(1 - softmax(h'(x^t_j)))[argmax h(x^t_j)]

  i.e. `margin * E_s log p'[y_hat] + E_t log(1 - p'[y_hat])`. TLlib averages
  `source_i + target_i` elementwise, which is this for equal batch sizes.

  Args:
    source_logits: `(n_s, C)` main-head logits on source.
    source_adv_logits: `(n_s, C)` adversarial-head logits on source.
    target_logits: `(n_t, C)` main-head logits on target.
    target_adv_logits: `(n_t, C)` adversarial-head logits on target.
    margin: `gamma` (TLlib default 4).
  """
  source_adv_logits = as_float(source_adv_logits)
  target_adv_logits = as_float(target_adv_logits)
  source_prediction = jnp.argmax(as_float(source_logits), axis=-1)
  target_prediction = jnp.argmax(as_float(target_logits), axis=-1)

  source_log_probs = jax.nn.log_softmax(source_adv_logits, axis=-1)
  source_cross_entropy = -jnp.take_along_axis(
      source_log_probs, source_prediction[:, None], axis=-1)[:, 0]
  target_probs = jax.nn.softmax(target_adv_logits, axis=-1)
  target_shifted = jnp.take_along_axis(
      shift_log(1.0 - target_probs), target_prediction[:, None], axis=-1)[:, 0]
  return -margin * jnp.mean(source_cross_entropy) + jnp.mean(target_shifted)


def regression_mdd(source_outputs: jax.Array,
                   source_adv_outputs: jax.Array,
                   target_outputs: jax.Array,
                   target_adv_outputs: jax.Array,
                   *,
                   margin: float,
                   disparity: str = "l1") -> jax.Array:
  """Regression MDD (the disparity discrepancy of TLlib's DD), with TLlib's signs:

      D = -margin * mean_{i,f} L(h'(x^s_i)_f, h(x^s_i)_f)
          + mean_{j,f} L(h'(x^t_j)_f, h(x^t_j)_f)

  with `L(a, b) = |a - b|` ('l1', TLlib's `F.l1_loss`, its default) or
  `(a - b)^2` ('l2', `F.mse_loss`), averaged over examples and factors. The
  main head's outputs `h` are constants (TLlib's `y.detach()`), so `D` gives
  the main head no gradient. As in classification, the adversarial head
  descends `-D` and the features, through the reversed gradient, `D`. TLlib
  averages `source_i + target_i` elementwise, which is this for equal batch
  sizes.

  Args:
    source_outputs: `(n_s, F)` main-head predictions on source.
    source_adv_outputs: `(n_s, F)` adversarial-head predictions on source.
    target_outputs: `(n_t, F)` main-head predictions on target.
    target_adv_outputs: `(n_t, F)` adversarial-head predictions on target.
    margin: `gamma` (TLlib's DD: 1).
    disparity: 'l1' or 'l2'.
  """
  if disparity not in ("l1", "l2"):
    raise ValueError(f"disparity must be 'l1' or 'l2', not {disparity!r}")
  loss = jnp.abs if disparity == "l1" else jnp.square

  def mean_disparity(outputs, adv_outputs):
    outputs = jax.lax.stop_gradient(as_float(outputs))
    return jnp.mean(loss(as_float(adv_outputs) - outputs))

  return (-margin * mean_disparity(source_outputs, source_adv_outputs)
          + mean_disparity(target_outputs, target_adv_outputs))


__all__ = ["shift_log", "mdd", "regression_mdd"]
