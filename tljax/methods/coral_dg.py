"""CORAL for domain generalisation (Sun & Saenko, "Deep CORAL", ECCV 2016
workshops), as TLlib's DG `coral.py` (after DomainBed's CORAL).

A domain-generalisation method (labelled domains only, sampled per domain).
One pass over the batch; the loss is the mean of the domains' cross-entropies
plus `trade_off` times TLlib's correlation alignment loss (mean and
covariance differences, `losses.coral`) of the features of every pair of
the step's domains, averaged over the pairs (`losses.pairwise_coral`).
`deep_coral` is the adaptation method (labelled source vs unlabelled
target); this one aligns the labelled domains with each other.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register


@register("coral_dg")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CoralDG(base.Method):
  """Per-domain cross-entropy + `trade_off` x pairwise CORAL of the features.

  Attributes:
    trade_off: the alignment's weight (TLlib's `--trade-off`, 1).
  """

  trade_off: float

  inputs = ("source",)

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    base.require_domains("CORAL", num_source_domains, source_sampling)

  def loss(self, ctx, variables, batch, step, rng):
    del step
    source = batch["source"]
    (features, logits), variables = ctx.apply_classifier(variables, source["image"], train=True,
                                                         rng=rng)
    indices, _ = ctx.group_by_domain(source["domain"])
    cls_loss = jnp.mean(losses.domain_risks(logits[indices], source["label"][indices]))
    alignment = losses.pairwise_coral(features[indices])
    return cls_loss + self.trade_off * alignment, (variables, {
        "cls_loss": cls_loss, "transfer_loss": alignment,
        **ctx.supervised_metrics(logits, source["label"])})
