"""ERM (source only) and ERM with target BatchNorm: the baselines without an adaptation loss.

- `source_only`: empirical risk minimisation on the labelled source, TLlib's
  ERM (`erm.py`): only the source batch goes through the network, so
  BatchNorm trains on and keeps statistics of the source alone. The step
  never reads the target batch. (AdaBN, the same training evaluated with
  target statistics, is `tljax/methods/adabn.py`.)
- `source_only_joint_bn`: the source loss alone, but the target batch goes
  through the network with the source batch (one pass over `[source;
  target]`), so BatchNorm normalises and accumulates statistics over both
  domains: the setting of TLlib's DANN-style methods with the adaptation term
  removed. It is not "no adaptation": target statistics alone move the result.
"""

from __future__ import annotations

import dataclasses

from tljax.methods import base, register, terms


@register("source_only")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceOnly(base.Method):
  """ERM: the supervised loss on the source batch, which alone goes through the network.

  Attributes:
    trade_off_cls_strong: > 0 adds this weight times the loss on a strong view
      of the labelled batch (`terms.labelled_loss`): TLlib's semi-supervised
      ERM (`erm.py`, 0.1), the baseline of its semi-supervised methods.
  """

  inputs = ("source",)
  label_kinds = ("classification", "regression")

  trade_off_cls_strong: float = 0.0

  @property
  def source_views(self) -> tuple[str, ...]:
    return ("image_strong",) if self.trade_off_cls_strong else ()

  def loss(self, ctx, variables, batch, step, rng):
    if not self.trade_off_cls_strong:
      return terms.source_only_loss(ctx, variables, batch, rng)
    source = batch["source"]
    cls_loss, logits, variables = terms.labelled_loss(
        ctx, variables, source, rng, trade_off_strong=self.trade_off_cls_strong)
    return cls_loss, (variables, {"cls_loss": cls_loss,
                                  **ctx.supervised_metrics(logits, source["label"])})


@register("source_only_joint_bn")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceOnlyJointBN(terms.TermsMethod):
  """Source cross-entropy after one pass over `[source; target]` (no term)."""

  terms: tuple = ()

  def __post_init__(self):
    super().__post_init__()
    if self.terms:
      raise ValueError("source_only_joint_bn has no adaptation terms")
