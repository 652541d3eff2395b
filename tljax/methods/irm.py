"""IRM (Arjovsky et al., "Invariant Risk Minimization", 2019), as TLlib's DG `irm.py`.

A domain-generalisation method: it reads only the labelled domains (`inputs =
('source',)`, several of them, sampled per domain). One pass over the batch;
the loss is the cross-entropy of the whole batch plus, per domain, IRMv1's
penalty (`losses.irm_penalty`: the product of the gradients of the
cross-entropy of the domain's even and odd examples with respect to a dummy
scale on the logits), averaged over the step's domains.

The penalty is annealed as in DomainBed and TLlib: for the first
`anneal_steps` steps its weight is 1, then `trade_off`, and at that point the
optimizer starts afresh (TLlib builds a new SGD and a new cosine schedule over
the steps left, "to avoid sharp jump in gradient magnitudes"): two optimizers,
`anneal` and `main`, one per phase, each compiled into its own step.
`AnnealedPenalty` is that schedule, shared with V-REx (`vrex.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register, terms

ANNEAL, MAIN = "anneal", "main"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnnealedPenalty(base.Method):
  """Supervised loss plus a per-domain penalty weighted 1, then `trade_off`.

  Attributes:
    trade_off: the penalty's weight after the anneal phase.
    anneal_steps: steps with weight 1 (TLlib's `anneal_iters`); the
      optimizer and its schedule restart after them. 0: `trade_off` from the
      start, one optimizer.
  """

  trade_off: float
  anneal_steps: int

  inputs = ("source",)

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    base.require_domains(type(self).__name__, num_source_domains, source_sampling)

  def optimizers(self):
    if not self.anneal_steps:
      return {MAIN: base.OptimizerSpec()}
    return {ANNEAL: base.OptimizerSpec(), MAIN: base.OptimizerSpec(start=self.anneal_steps)}

  def phase_boundaries(self):
    return (self.anneal_steps,) if self.anneal_steps else ()

  def penalty(self, logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(supervised loss, penalty)` of the batch's `(N, k, C)` per-domain logits."""
    raise NotImplementedError

  def loss(self, ctx, variables, batch, weight, rng):
    source = batch["source"]
    (_, logits), variables = ctx.apply_classifier(variables, source["image"], train=True, rng=rng)
    indices, _ = ctx.group_by_domain(source["domain"])
    cls_loss, penalty = self.penalty(logits[indices], source["label"][indices])
    metrics = {"cls_loss": cls_loss, "penalty": penalty, "penalty_weight": weight,
               **ctx.supervised_metrics(logits, source["label"])}
    return cls_loss + weight * penalty, (variables, metrics)

  def train_step(self, ctx, state, batch, rng):
    def phase(optimizer, weight, offset):
      def run(s):
        new_state, metrics = ctx.update(
            s, optimizer, lambda v: self.loss(ctx, v, batch, jnp.asarray(weight, float), rng))
        # The rate this phase's optimizer applies (its schedule counts its own updates).
        rate = ctx.optimizer_schedules.get(optimizer, ctx.schedule)(s.step - offset)
        return new_state, {**metrics, "learning_rate": rate}
      return run

    if not self.anneal_steps:
      return phase(MAIN, self.trade_off, 0)(state)
    new_state, metrics = terms.phase_cond(ctx, state, self.anneal_steps, phase(ANNEAL, 1.0, 0),
                                          phase(MAIN, self.trade_off, self.anneal_steps))
    metrics = {k: v for k, v in metrics.items() if k != "pretraining"}
    return new_state, {**metrics, "annealing": (state.step < self.anneal_steps).astype(float)}


@register("irm")
@dataclasses.dataclass(frozen=True, kw_only=True)
class IRM(AnnealedPenalty):
  """IRMv1: cross-entropy of the batch + the mean of the domains' IRM penalties."""

  def penalty(self, logits, labels):
    cls_loss = jnp.mean(losses.domain_risks(logits, labels))
    return cls_loss, jnp.mean(jax.vmap(losses.irm_penalty)(logits, labels))
