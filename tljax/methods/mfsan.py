"""MFSAN (Zhu et al., "Aligning Domain-specific Distribution and Classifier
for Cross-domain Classification from Multiple Sources", AAAI 2019):
multi-source adaptation, after the authors' code (`MUDA/MFSAN`).

A shared backbone and one branch per labelled domain: the classifier's
`multi_source` head (`config.model.head_type`), whose branch j is a
domain-specific feature extractor and classifier (`Dense -> BatchNorm ->
ReLU -> Dense`). For each labelled domain j the loss has the cross-entropy of
branch j on domain j, the MMD between branch j's features of domain j and of
the target (`losses.gaussian_mmd`, the authors' estimate), and the
disagreement of the branches' softmax outputs on the target
(`losses.prediction_disagreement`); the two alignment terms are weighted by
the progressive `2 / (1 + exp(-10 p)) - 1`, `p` the fraction of
`trade_off_warmup` steps done, this one included (the authors' `i / iteration`,
`i` from 1, over the whole run). The target is
predicted by the mean of the branches' softmax outputs (the head's output).

Departures from the authors' code, which are choices of this library: one
update per step over every labelled domain's terms (averaged), where the
authors take one update per domain in turn, each with a fresh target batch;
branches on the pooled features (the authors' branch is a 1x1-3x3-1x1
convolution block on the ResNet's last feature map, then pooled); and the
disagreement of the branches' predictions, as the paper states, where the
authors' code takes the softmax of their 256-d features.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import base, register


@register("mfsan")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MFSAN(base.Method):
  """Per-domain branches: their cross-entropy, MMD to the target, agreement on it.

  Attributes:
    trade_off: weight of MMD + disagreement, at the end of the warm-up.
    trade_off_warmup: steps of the progressive weight (the run's length).
  """

  trade_off: float
  trade_off_warmup: int

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    base.require_domains("MFSAN", num_source_domains, source_sampling)

  def init_networks(self, ctx, rng, variables, outputs):
    if ctx.classifier.head_type != "multi_source":
      raise ValueError("MFSAN's per-domain branches are the classifier's head: set "
                       "config.model.head_type='multi_source' (as configs/mfsan.py does)")
    return super().init_networks(ctx, rng, variables, outputs)

  def loss(self, ctx, variables, batch, step, rng):
    source, target = batch["source"], batch["target"]
    indices, domains = ctx.group_by_domain(source["domain"])
    keys = jax.random.split(rng, indices.shape[0] + 1)
    (_, (target_features, target_logits)), variables = ctx.apply_classifier(
        variables, target["image"], train=True, rng=keys[-1], branches=True)
    risks, mmds, accuracies = [], [], []
    for j in range(indices.shape[0]):
      labels = source["label"][indices[j]]
      own = domains[j]
      (_, (branch_features, branch_logits)), updated = ctx.apply_classifier(
          variables, source["image"][indices[j]], train=True, rng=keys[j], branches=True)
      variables = _own_branch_statistics(variables, updated, own)
      risks.append(ctx.supervised_loss(branch_logits[own], labels))
      accuracies.append(ctx.supervised_metrics(branch_logits[own], labels)["source_train_accuracy"])
      mmds.append(losses.gaussian_mmd(branch_features[own], target_features[own]))
    cls_loss, mmd = jnp.mean(jnp.stack(risks)), jnp.mean(jnp.stack(mmds))
    disagreement = losses.prediction_disagreement(target_logits)
    # The authors count the step being taken: their first step is weighted
    # at p = 1 / iteration, not 0, and their last at p = 1.
    weight = self.trade_off * base.progressive_weight(step + 1, self.trade_off_warmup)
    return cls_loss + weight * (mmd + disagreement), (variables, {
        "cls_loss": cls_loss, "mmd": mmd, "disagreement": disagreement,
        "transfer_loss": mmd + disagreement, "trade_off_now": weight,
        "source_train_accuracy": jnp.mean(jnp.stack(accuracies))})


def _own_branch_statistics(before: base.Variables, after: base.Variables,
                           own: jax.Array) -> base.Variables:
  """`after`, with the BatchNorm statistics of every branch but `own` as in
  `before`: a labelled domain moves only its own branch's running averages
  (the authors run only that branch on it), the shared backbone's as usual."""
  head_before = before["batch_stats"]["classifier"]["head"]
  head_after = after["batch_stats"]["classifier"]["head"]
  kept = {}
  for name, stats in head_after.items():
    branch = int(name[len("branch"):name.index("_")])
    kept[name] = jax.tree.map(lambda new, old, b=branch: jnp.where(own == b, new, old),
                              stats, head_before[name])
  classifier = {**after["batch_stats"]["classifier"], "head": kept}
  return {**after, "batch_stats": {**after["batch_stats"], "classifier": classifier}}
