"""V-REx (Krueger et al., "Out-of-Distribution Generalization via Risk
Extrapolation", ICML 2021), as TLlib's DG `vrex.py`.

A domain-generalisation method (labelled domains only, sampled per domain).
One pass over the batch; the loss is the mean of the domains' risks (their
cross-entropies) plus the variance of those risks (`losses.risk_variance`),
weighted 1 for the first `anneal_steps` steps and `trade_off` afterwards, when
the optimizer and its schedule start afresh: the anneal of `irm.py`
(`AnnealedPenalty`), as in TLlib and DomainBed.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from tljax import losses
from tljax.methods import register
from tljax.methods.irm import AnnealedPenalty


@register("vrex")
@dataclasses.dataclass(frozen=True, kw_only=True)
class VREx(AnnealedPenalty):
  """Mean of the domains' risks + `trade_off` x their variance (after the anneal)."""

  def penalty(self, logits, labels):
    risks = losses.domain_risks(logits, labels)
    return jnp.mean(risks), losses.risk_variance(risks)
