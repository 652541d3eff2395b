"""Weights for label sets that differ: which classes and examples to trust.

When the target holds only some of the source classes (partial domain
adaptation) or classes of its own (open-set, universal), aligning every source
example with every target example pulls the source-private classes onto
target examples of other classes. The methods of these settings weight the
losses instead, from the network's own predictions:

- PADA (Cao et al., "Partial Adversarial Domain Adaptation", ECCV 2018): one
  weight per class, the target's average prediction (`pada_class_weights`),
  on the source cross-entropy (`class_weighted_cross_entropy`) and the
  domain-adversarial loss (`pada_adversarial_weights`).
- IWAN (Zhang et al., "Importance Weighted Adversarial Nets for Partial Domain
  Adaptation", CVPR 2018): one weight per source example, from how target-like
  a first discriminator finds it (`iwan_importance_weights`).
- UAN (You et al., "Universal Domain Adaptation", CVPR 2019): one weight per
  example of either domain, its "transferability" from domain similarity and
  prediction entropy (`uan_transferability`, `uan_normalize`).

Pure functions of arrays; the methods (`tljax/methods/pada.py`, `iwan.py`,
`uan.py`) compose them. Weights are constants of the step: each function stops
their gradient, as the references detach them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tljax.losses._arrays import as_float


def pada_class_weights(logits: jax.Array, *, temperature: float) -> jax.Array:
  """PADA's class weights from the target's predictions.

      gamma = (1/n) sum_i softmax(logits_i / T),   gamma <- gamma / max(gamma)

  (Cao et al. 2018, Eq. 5; TLlib's `ClassWeightModule`, `T = 0.1` by default.)
  Classes the target rarely predicts get weights near 0.

  Args:
    logits: `(n, C)` classifier outputs on the target examples.
    temperature: `T`.

  Returns:
    `(C,)` weights in `(0, 1]`, the largest 1.
  """
  logits = as_float(logits)
  weights = jnp.mean(jax.nn.softmax(logits / temperature, axis=-1), axis=0)
  return jax.lax.stop_gradient(weights / jnp.max(weights))


def class_weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                                 class_weights: jax.Array) -> jax.Array:
  """Cross-entropy with a weight per class, normalised by the batch's weights.

      sum_i w_{y_i} CE(logits_i, y_i) / sum_i w_{y_i}

  PyTorch's `F.cross_entropy(logits, labels, weight=w)` (mean reduction), which
  PADA's source loss is.
  """
  logits = as_float(logits)
  per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                     labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  weights = jax.lax.stop_gradient(as_float(class_weights))[labels]
  return jnp.sum(weights * per_example) / jnp.sum(weights)


def pada_adversarial_weights(class_weights: jax.Array,
                             source_labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """PADA's weights on the domain-adversarial loss: each source example its
  class's weight, each target example their mean (TLlib's
  `get_class_weight_for_adversarial_loss`), so both domains weigh alike.

  Returns:
    `(source_weights, target_weights)`, both `(n,)` for `n` source labels
    (TLlib's target batch has the source batch's size).
  """
  source = jax.lax.stop_gradient(as_float(class_weights))[source_labels]
  return source, jnp.full_like(source, jnp.mean(source))


def iwan_importance_weights(discriminator_logits: jax.Array) -> jax.Array:
  """IWAN's importance weight of each source example.

      w_i = 1 - D(f_i),   w_i <- w_i / (mean(w) + 1e-5)

  `D(f) = sigmoid(logit)` is the first discriminator's probability that `f`
  is a source example: source examples it takes for target ones (those of the
  classes the target shares) get large weights (Zhang et al. 2018, Eq. 4;
  TLlib's `ImportanceWeightModule.get_importance_weight`, which adds 1e-5).

  Args:
    discriminator_logits: `(n,)` logits of the first discriminator on the
      source features.
  """
  weights = 1.0 - jax.nn.sigmoid(as_float(discriminator_logits).reshape(-1))
  return jax.lax.stop_gradient(weights / (jnp.mean(weights) + 1e-5))


def uan_transferability(domain_logits: jax.Array, logits: jax.Array, *, domain: str,
                        class_temperature: float, domain_temperature: float = 1.0) -> jax.Array:
  """UAN's sample-level transferability criterion (You et al. 2019, Eq. 7-8).

      H = entropy(softmax(logits / T_c)) / log |C|    (normalised to [0, 1])
      d = sigmoid(domain_logit / T_d)                  (probability of 'source')
      source: w_s = H - d,    target: w_t = d - H

  An example of a shared class is uncertain and domain-ambiguous (a source
  one looks like target: small `d`; high entropy), so its weight is high; a
  private class's is low. The authors' `get_source_share_weight` /
  `get_target_share_weight` (entropy with `log(p + 1e-10)`); they pass the
  discriminator's probabilities through `log(y / (1 - y + 1e-10) + 1e-10)`
  back to logits, which differs from taking the logits by those offsets only.
  Their training uses `T_c = 10` on the source, 1 on the target, and 1 at test.

  Args:
    domain_logits: `(n,)` logits of the non-adversarial discriminator.
    logits: `(n, C)` classifier outputs.
    domain: 'source' or 'target' (the sign).
    class_temperature: `T_c`.
    domain_temperature: `T_d`.

  Returns:
    `(n,)` weights, before `uan_normalize`.
  """
  if domain not in ("source", "target"):
    raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
  logits = as_float(logits)
  probs = jax.nn.softmax(logits / class_temperature, axis=-1)
  entropy = -jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1) / np.log(logits.shape[-1])
  similarity = jax.nn.sigmoid(as_float(domain_logits).reshape(-1) / domain_temperature)
  weights = entropy - similarity
  return jax.lax.stop_gradient(weights if domain == "source" else -weights)


def uan_normalize(weights: jax.Array) -> jax.Array:
  """The authors' `normalize_weight`: min-max scaled to [0, 1] over the batch,
  then divided by the mean (so the weights average 1)."""
  weights = as_float(weights)
  weights = (weights - jnp.min(weights)) / (jnp.max(weights) - jnp.min(weights))
  return jax.lax.stop_gradient(weights / jnp.mean(weights))


__all__ = ["pada_class_weights", "class_weighted_cross_entropy", "pada_adversarial_weights",
           "iwan_importance_weights", "uan_transferability", "uan_normalize"]
