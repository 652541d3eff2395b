"""MDD (Zhang et al., "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019).

An adversarial head behind gradient reversal (TLlib's warm start up to
`grl_hi = 0.1`) maximises the margin disparity with the main head's
predictions; the features minimise it. The term's value is `-D`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from tljax import losses
from tljax.methods import terms
from tljax.models.heads import TwoLayerHead, dense


@terms.register_term("mdd")
class MDD(terms.ReversalTerm):
  """Margin disparity discrepancy with an adversarial head.

  The adversarial head has the main head's shape: TLlib's MDD uses two-layer
  heads whose hidden width is the bottleneck width for both
  (`config.model.head_hidden` = `config.model.bottleneck_dim`, and
  `head_width` here); `head_width = 0` gives a linear one. `head_init` is its
  init scheme (TLlib: N(0, 0.01) weights, zero biases, 'tllib_mdd').
  """

  num_classes: int
  margin: float
  head_width: int
  head_dropout: float
  head_init: str

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    coeff = self.grl_coeff(step)
    reversed_features = losses.gradient_reversal(features, coeff)
    if self.head_width:
      adv_logits = TwoLayerHead(self.num_classes, self.head_width, self.head_dropout,
                                dtype=features.dtype, init_scheme=self.head_init,
                                name="adv_head")(reversed_features, train)
    else:
      adv_logits = dense(self.num_classes, features.shape[-1], features.dtype, name="adv_head",
                         init=self.head_init)(reversed_features)
    n = outputs.source_features.shape[0]
    disparity = losses.mdd(outputs.source_logits, adv_logits[:n], outputs.target_logits,
                           adv_logits[n:], margin=self.margin)
    return -disparity, {"mdd": disparity, "grl_coeff": coeff}
