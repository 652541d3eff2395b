"""MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021), as TLlib's DG `mixstyle.py`.

MixStyle is a layer of the backbone (`backbone_kwargs.mixstyle_layers`, see
`tljax.models.normalization`); the method is ERM on the labelled domains
that hands the backbone each example's domain, so that its MixStyle layers
pair examples across domains (TLlib's cross-domain mixing, with two
domains per batch: `config.data.domains_per_step=2`). A backbone in
`mixstyle_mode='random'` mixes within the whole batch instead and needs no
domains (plain `source_only` trains it too).
"""

from __future__ import annotations

import dataclasses

from tljax.methods import base, register


@register("mixstyle")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MixStyleERM(base.Method):
  """ERM whose forward pass gives the backbone's MixStyle layers the domains."""

  inputs = ("source",)

  def check_task(self, labels, *, has_target, num_source_domains, source_sampling="per_domain"):
    super().check_task(labels, has_target=has_target, num_source_domains=num_source_domains,
                       source_sampling=source_sampling)
    base.require_domains("MixStyle", num_source_domains, source_sampling, grouped=False)

  def init_networks(self, ctx, rng, variables, outputs):
    if not getattr(ctx.classifier.backbone, "mixstyle_layers", ()):
      raise ValueError("method 'mixstyle' mixes feature statistics in the backbone's MixStyle "
                       "layers, and it has none: set config.model.backbone_kwargs."
                       "mixstyle_layers (e.g. ('layer1', 'layer2', 'layer3') for a ResNet, "
                       "('block1', 'block2') for small_cnn), as configs/mixstyle.py does")
    return super().init_networks(ctx, rng, variables, outputs)

  def loss(self, ctx, variables, batch, step, rng):
    del step
    source = batch["source"]
    (_, logits), variables = ctx.apply_classifier(variables, source["image"], train=True, rng=rng,
                                                  domains=source["domain"])
    cls_loss = ctx.supervised_loss(logits, source["label"])
    return cls_loss, (variables, {"cls_loss": cls_loss,
                                  **ctx.supervised_metrics(logits, source["label"])})
