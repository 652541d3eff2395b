"""MLDG (Li et al., "Learning to Generalize: Meta-Learning for Domain
Generalization", AAAI 2018), as TLlib's DG `mldg.py`.

A domain-generalisation method (labelled domains only, sampled per domain).
Each step splits its domains at random into `num_support` meta-train
(support) domains and the rest, the meta-test (query) domains. An inner step
of the run's own optimizer (its current momentum and learning rate, as TLlib's
`higher.innerloop_ctx` copies them) on the support loss moves the parameters
from `theta` to `theta'`; the objective is

    L_support(theta) + trade_off * L_query(theta')

whose gradient with respect to `theta` reaches through the inner step
(second order, by `jax.grad` through the optimizer's update), and the run's
optimizer takes that gradient. Every domain goes through the network on its
own (one forward pass per domain, BatchNorm on its own statistics). Losses
are means over the support (query) domains.

BatchNorm's running statistics keep what both passes leave (the support
domains', then the query domains' at `theta'`). This is a choice of this
library: in TLlib the query domains pass through `higher`'s copy of the
network, whose buffers are discarded, so only the support pass reaches the
running statistics; parameters and losses are the same either way
(`tests/test_dg_parity.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from tljax.methods import base, register


def split_domains(rng: jax.Array, num_domains: int, num_support: int) -> tuple[jax.Array,
                                                                               jax.Array]:
  """`(support, query)`: positions among the step's `num_domains` domains,
  `num_support` drawn at random (TLlib's `random_split`) and the rest."""
  order = jax.random.permutation(rng, num_domains)
  return order[:num_support], order[num_support:]


@register("mldg")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MLDG(base.Method):
  """Meta-train on some domains, meta-test the updated network on the others.

  Attributes:
    num_support: support (meta-train) domains per step (TLlib's
      `--n-support-domains`, 1); the other domains of the step are queries.
    trade_off: the query loss's weight (TLlib's `--trade-off`, beta, 1).
    inner_steps: inner optimizer steps on the support loss (TLlib's
      `--inner-iters`, 1).
  """

  num_support: int
  trade_off: float
  inner_steps: int

  inputs = ("source",)

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    base.require_domains("MLDG", num_source_domains, source_sampling,
                         minimum=self.num_support + 1)

  def train_step(self, ctx, state, batch, rng):
    if not 0 < self.num_support < ctx.domains_per_step:
      raise ValueError(f"MLDG: num_support={self.num_support} must leave at least one query "
                       f"domain of the {ctx.domains_per_step} in each step "
                       "(config.data.domains_per_step)")
    source = batch["source"]
    indices, _ = ctx.group_by_domain(source["domain"])
    split_rng, support_rng, query_rng = jax.random.split(rng, 3)
    support, query = split_domains(split_rng, ctx.domains_per_step, self.num_support)
    optimizer, opt_state, mask = ctx.optimizers["main"], state.opt_state["main"], ctx.trainable["main"]

    def mean_loss(variables, groups, key):
      """Mean supervised loss over the domains `groups` (positions), one pass each."""
      total, accuracy = jnp.zeros((), float), jnp.zeros((), float)
      for group, group_key in zip(groups, jax.random.split(key, len(groups))):
        rows = indices[group]
        labels = source["label"][rows]
        (_, logits), variables = ctx.apply_classifier(variables, source["image"][rows],
                                                      train=True, rng=group_key)
        total = total + ctx.supervised_loss(logits, labels) / len(groups)
        accuracy = accuracy + ctx.supervised_metrics(logits, labels)[
            "source_train_accuracy"] / len(groups)
      return total, (variables, accuracy)

    def with_params(variables, trainable):
      return {**variables, "params": base.merge(variables["params"], trainable)}

    def loss_fn(variables):
      theta = base.select(variables["params"], mask)
      # The inner steps: the run's optimizer on the support loss, differentiable.
      inner, inner_state = theta, opt_state
      for _ in range(self.inner_steps):
        grads = jax.grad(lambda p: mean_loss(with_params(variables, p), support, support_rng)[0])(inner)
        updates, inner_state = optimizer.update(grads, inner_state, inner)
        inner = optax.apply_updates(inner, updates)
      support_loss, (variables, _) = mean_loss(variables, support, support_rng)
      query_loss, (query_variables, accuracy) = mean_loss(with_params(variables, inner), query,
                                                          query_rng)
      # Statistics as the passes left them; the parameters stay theta.
      variables = {**query_variables, "params": variables["params"]}
      return support_loss + self.trade_off * query_loss, (variables, {
          "support_loss": support_loss, "query_loss": query_loss,
          "source_train_accuracy": accuracy})

    return ctx.update(state, "main", loss_fn)
