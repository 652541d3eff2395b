"""Losses over several labelled domains: domain generalisation and multi-source adaptation.

Pure functions of arrays already grouped by domain (`(N, k, ...)`: N domains
of k examples each, the chunks TLlib's DG scripts cut their batches into;
`StepContext.group_by_domain` makes them from a batch). The methods of
`tljax/methods/{irm,vrex,groupdro,coral_dg,m3sda,mfsan}.py` compose them.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import optax

from tljax.losses.coral import coral


def domain_risks(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`(N,)` mean cross-entropy of each domain's `(k, C)` logits."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), axis=-1)


def irm_penalty(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """IRMv1's penalty of one domain (Arjovsky et al., "Invariant Risk
  Minimization", 2019), in DomainBed's unbiased form that TLlib's
  `InvariancePenaltyLoss` uses:

      g_h = d/dw CE(w * logits[h], labels[h]) at w = 1,   penalty = g_1 * g_2

  with the domain's examples split into its even (`h = 1`) and odd (`h = 2`)
  positions, so that the product of the two half-batch gradients estimates
  the squared gradient of the dummy classifier `w` without bias.

  Args:
    logits: `(k, C)` one domain's logits.
    labels: `(k,)` their labels.
  """
  def half_gradient(half_logits, half_labels):
    risk = lambda scale: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        half_logits * scale, half_labels))
    return jax.grad(risk)(jnp.ones((), half_logits.dtype))

  return half_gradient(logits[0::2], labels[0::2]) * half_gradient(logits[1::2], labels[1::2])


def risk_variance(risks: jax.Array) -> jax.Array:
  """V-REx's penalty (Krueger et al., "Out-of-Distribution Generalization via
  Risk Extrapolation", ICML 2021): the variance of the domains' risks,
  `mean_i (R_i - mean_j R_j)^2` (the biased variance, as TLlib's `vrex.py`)."""
  return jnp.mean((risks - jnp.mean(risks)) ** 2)


def group_dro_weights(weights: jax.Array, risks: jax.Array, domains: jax.Array,
                      eta: float) -> tuple[jax.Array, jax.Array]:
  """Group DRO's exponentiated-gradient step (Sagawa et al., ICLR 2020; TLlib's
  `AutomaticUpdateDomainWeightModule`):

      q_d <- q_d exp(eta R_d)   for each domain d of the batch,

  then the batch's objective weights are its domains' `q` normalised over
  them. The risks carry no gradient into `q`.

  Args:
    weights: `(D,)` every labelled domain's weight `q` (kept summing to 1:
      TLlib keeps them unnormalised, and only their ratios are ever read).
    risks: `(N,)` the risks of the batch's domains.
    domains: `(N,)` those domains' positions among the D.
    eta: the step size.

  Returns:
    `(new weights (D,), objective weights (N,))`.
  """
  risks = jax.lax.stop_gradient(risks)
  updated = weights.at[domains].multiply(jnp.exp(eta * risks))
  updated = updated / jnp.sum(updated)
  chosen = updated[domains]
  return updated, chosen / jnp.sum(chosen)


def pairwise_coral(features: jax.Array) -> jax.Array:
  """TLlib's DG CORAL penalty: `coral` (TLlib's `CorrelationAlignmentLoss`:
  mean squared difference of means plus of covariances) averaged over the
  `N (N - 1) / 2` pairs of the domains' `(N, k, d)` features."""
  pairs = list(itertools.combinations(range(features.shape[0]), 2))
  if not pairs:
    return jnp.zeros((), features.dtype)
  return sum(coral(features[i], features[j]) for i, j in pairs) / len(pairs)


def _norm(x: jax.Array) -> jax.Array:
  """Euclidean norm with gradient 0 (not NaN) at the origin."""
  squared = jnp.sum(x * x)
  safe = jnp.where(squared > 0, squared, 1.0)
  return jnp.where(squared > 0, jnp.sqrt(safe), 0.0)


def moment_distance(source: jax.Array, target: jax.Array, *, moments: int = 2) -> jax.Array:
  """M3SDA's moment distance (Peng et al., "Moment Matching for Multi-Source
  Domain Adaptation", ICCV 2019, Eq. 1):

      MD^2 = sum_{k=1}^{K} ( 1/N sum_i ||E[x_i^k] - E[x_T^k]||_2
                             + C(N, 2)^-1 sum_{i<j} ||E[x_i^k] - E[x_j^k]||_2 )

  over the N labelled domains' and the target's features, with the k-th raw
  moments taken element-wise over each domain's examples.

  Args:
    source: `(N, k, d)` each labelled domain's features.
    target: `(k_t, d)` the target's features.
    moments: K, the highest order matched.
  """
  num_sources = source.shape[0]
  total = jnp.zeros((), source.dtype)
  for order in range(1, moments + 1):
    source_moment = jnp.mean(source**order, axis=1)
    target_moment = jnp.mean(target**order, axis=0)
    total = total + sum(_norm(source_moment[i] - target_moment)
                        for i in range(num_sources)) / num_sources
    pairs = list(itertools.combinations(range(num_sources), 2))
    if pairs:
      total = total + sum(_norm(source_moment[i] - source_moment[j]) for i, j in pairs) / len(pairs)
  return total


def gaussian_mmd(source: jax.Array, target: jax.Array, *, kernel_mul: float = 2.0,
                 kernel_num: int = 5) -> jax.Array:
  """The MMD of MFSAN's code (Zhu et al., AAAI 2019; the DAN-style estimate of
  the authors' `mmd.py`): the biased (V-statistic) estimate

      mean(K_ss) + mean(K_tt) - 2 mean(K_st),   K = sum_u exp(-||x - y||^2 / b_u),

  `b_u = b kernel_mul^(u - kernel_num // 2)`, `u = 0 .. kernel_num - 1`, with
  `b` the mean squared distance of the pairs of distinct rows of `[source;
  target]` (no gradient). `source` and `target`: `(n, d)` each.
  """
  z = jnp.concatenate([source, target])
  n, total = source.shape[0], z.shape[0]
  distances = jnp.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
  bandwidth = jax.lax.stop_gradient(jnp.sum(distances)) / (total * total - total)
  bandwidth = bandwidth / kernel_mul ** (kernel_num // 2)
  kernel = sum(jnp.exp(-distances / (bandwidth * kernel_mul**u)) for u in range(kernel_num))
  return (jnp.mean(kernel[:n, :n]) + jnp.mean(kernel[n:, n:])
          - jnp.mean(kernel[:n, n:]) - jnp.mean(kernel[n:, :n]))


def prediction_disagreement(logits: jax.Array) -> jax.Array:
  """MFSAN's classifier alignment: the mean absolute difference of the
  softmax outputs of every pair of the `(S, n, C)` branches on the same
  target examples, averaged over pairs (each branch's term in the authors'
  code is its mean over the other branches)."""
  probabilities = jax.nn.softmax(logits, axis=-1)
  pairs = list(itertools.combinations(range(logits.shape[0]), 2))
  if not pairs:
    return jnp.zeros((), logits.dtype)
  return sum(jnp.mean(jnp.abs(probabilities[i] - probabilities[j])) for i, j in pairs) / len(pairs)


__all__ = ["domain_risks", "irm_penalty", "risk_variance", "group_dro_weights", "pairwise_coral",
           "moment_distance", "gaussian_mmd", "prediction_disagreement"]
