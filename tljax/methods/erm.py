"""Baselines without an adaptation loss: ERM, AdaBN, and ERM with target BatchNorm.

- `source_only`: empirical risk minimisation on the labelled source, TLlib's
  ERM (`erm.py`): only the source batch goes through the network, so
  BatchNorm trains on and keeps statistics of the source alone. The step
  never reads the target batch.
- `adabn`: the same training; at evaluation the BatchNorm statistics are
  recomputed on the target training split (Li et al., "Revisiting Batch
  Normalization for Practical Domain Adaptation", 2016).
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
  """ERM: the supervised loss on the source batch, which alone goes through the network."""

  inputs = ("source",)
  label_kinds = ("classification", "regression")

  def loss(self, ctx, variables, batch, step, rng):
    return terms.source_only_loss(ctx, variables, batch, rng)


@register("adabn")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaBN(SourceOnly):
  """ERM, evaluated with BatchNorm statistics recomputed on the target training split."""

  def eval_variables(self, ctx, state, batch_statistics):
    return batch_statistics(base.owned(state.variables, base.CLASSIFIER))


@register("source_only_joint_bn")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceOnlyJointBN(terms.TermsMethod):
  """Source cross-entropy after one pass over `[source; target]` (no term)."""

  terms: tuple = ()

  def __post_init__(self):
    super().__post_init__()
    if self.terms:
      raise ValueError("source_only_joint_bn has no adaptation terms")
