"""Group DRO (Sagawa et al., "Distributionally Robust Neural Networks for
Group Shifts", ICLR 2020), as TLlib's DG `groupdro.py`.

A domain-generalisation method (labelled domains only, sampled per domain).
Each domain of the step goes through the network on its own (one forward
pass per domain, so BatchNorm normalises each with its own statistics, as in
TLlib and DomainBed); the domains' risks update the group weights `q` by an
exponentiated-gradient step (`losses.group_dro_weights`), and the loss is the
`q`-weighted sum of the risks. `q` (one weight per labelled domain, starting
uniform) lives in the train state (`method_state['group_weights']`), so a
resumed run continues with the weights it had.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register


@register("groupdro")
@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupDRO(base.Method):
  """Risks weighted by group weights that grow with each domain's risk.

  Attributes:
    eta: the exponentiated-gradient step size (TLlib's `--eta`, 0.01).
  """

  eta: float

  inputs = ("source",)

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    base.require_domains("GroupDRO", num_source_domains, source_sampling)

  def init_method_state(self, ctx, variables):
    count = ctx.num_source_domains
    # In the parameters' dtype: a float64 run keeps its weights in float64 too.
    dtype = jax.tree.leaves(variables["params"])[0].dtype
    return {"group_weights": jnp.full((count,), 1.0 / count, dtype)}

  def train_step(self, ctx, state, batch, rng):
    source = batch["source"]
    indices, domains = ctx.group_by_domain(source["domain"])
    weights = state.method_state["group_weights"]

    def loss_fn(variables):
      risks, accuracies = [], []
      for j, key in enumerate(jax.random.split(rng, indices.shape[0])):
        labels = source["label"][indices[j]]
        (_, logits), variables = ctx.apply_classifier(
            variables, source["image"][indices[j]], train=True, rng=key)
        risks.append(ctx.supervised_loss(logits, labels))
        accuracies.append(ctx.supervised_metrics(logits, labels)["source_train_accuracy"])
      risks = jnp.stack(risks)
      new_weights, step_weights = losses.group_dro_weights(weights, risks, domains, self.eta)
      metrics = {"cls_loss": jnp.mean(risks), "worst_domain_risk": jnp.max(risks),
                 "source_train_accuracy": jnp.mean(jnp.stack(accuracies)),
                 "max_group_weight": jnp.max(new_weights), "_group_weights": new_weights}
      return jnp.sum(step_weights * risks), (variables, metrics)

    state, metrics = ctx.update(state, "main", loss_fn)
    new_weights = metrics.pop("_group_weights")
    return state.replace(method_state={"group_weights": new_weights}), metrics
