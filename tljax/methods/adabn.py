"""AdaBN: ERM evaluated with BatchNorm statistics recomputed on the target.

`adabn` trains exactly as `source_only` (`tljax/methods/source_only.py`); at
evaluation the BatchNorm statistics are recomputed on the target training
split (Li et al., "Revisiting Batch Normalization for Practical Domain
Adaptation", 2016).
"""

from __future__ import annotations

import dataclasses

from tljax.methods import base, register
from tljax.methods.source_only import SourceOnly


@register("adabn")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaBN(SourceOnly):
  """ERM, evaluated with BatchNorm statistics recomputed on the target training split."""

  def eval_variables(self, ctx, state, batch_statistics):
    return batch_statistics(base.owned(state.variables, base.CLASSIFIER))
