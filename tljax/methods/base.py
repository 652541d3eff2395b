"""How a domain-adaptation method joins the train step.

The step runs the classifier once on the concatenated source + target batch
(so BatchNorm sees both domains) or, where the method asks for it
(`joint_forward=False`), once per domain, as TLlib does for each method, and
hands the outputs to the method. A method is a linen module: it may own parameters and BatchNorm
statistics (a domain discriminator, an adversarial head), which live in the
train state beside the classifier's under their own top-level names, so
`config.param_groups` addresses them like any other parameter
(`discriminator/.*`). It returns the term added to the source cross-entropy,
already weighted by its `trade_off`, and metrics to log.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax import losses


@flax.struct.dataclass
class DomainOutputs:
  """The classifier's outputs on one step's source and target batches."""

  source_features: jax.Array
  target_features: jax.Array
  source_logits: jax.Array
  target_logits: jax.Array
  source_labels: jax.Array


class Method(nn.Module):
  """A method's transfer term. Subclasses override `__call__`.

  Called as `method.apply(variables, outputs, step=step, train=train,
  rngs=..., mutable=['batch_stats'])`; `step` is the traced global step (for
  warm-start schedules inside the jitted step).
  """

  trade_off: float = 1.0
  # One classifier pass over [source; target] (BatchNorm statistics shared by the
  # domains: TLlib's DANN, CDAN, JAN, MCC, MDD, BSP) or one pass per domain
  # (TLlib's DAN and AFN).
  joint_forward: bool = True
  # 0: the transfer term keeps its weight from the first step (TLlib). N > 0:
  # its weight rises as 2 / (1 + exp(-10 p)) - 1 with p = min(step / N, 1), the
  # progressive schedule of JAN (Long et al. 2017, after Ganin & Lempitsky 2015),
  # which keeps noisy early features from being aligned; JAN sets N to the whole run.
  trade_off_warmup: int = 0

  def __call__(self, outputs: DomainOutputs, *, step: jax.Array,
               train: bool = True) -> tuple[jax.Array, dict[str, Any]]:
    raise NotImplementedError

  def trade_off_scale(self, step: jax.Array) -> jax.Array:
    """The factor (in [0, 1)) applied to the transfer term at `step`; 1 without warm-up."""
    if self.trade_off_warmup <= 0:
      return jnp.ones((), jnp.float32)
    # The gradient-reversal warm start with alpha 10 over `trade_off_warmup` steps, held at p = 1.
    step = jnp.minimum(jnp.asarray(step, jnp.float32), self.trade_off_warmup)
    return losses.warm_start_coeff(step, alpha=10.0, max_steps=self.trade_off_warmup)


class SourceOnly(Method):
  """No adaptation: the classifier trains on labelled source data only."""

  def __call__(self, outputs, *, step, train=True):
    del outputs, step, train
    return jnp.zeros((), jnp.float32), {}
