"""DD: the disparity discrepancy of MDD for regression (Zhang et al., "Bridging
Theory and Algorithm for Domain Adaptation", ICML 2019; TLlib's
`examples/domain_adaptation/image_regression/dd.py`).

An adversarial regressor head behind gradient reversal (TLlib's warm start up
to `grl_hi = 0.1`) maximises the disparity of its predictions with the main
head's, weighted `-margin` on the source and `+1` on the target; the features
minimise it. The term's value is `-D` (`losses.regression_mdd`): TLlib trains
on `mse - trade_off * D`. TLlib's regressor runs one pass over `[source;
target]` (`forward='joint'`) and gives both heads the same shape and output
sigmoid; the adversarial head here is the classifier's `bn_mlp` head
(`tljax.models.heads.BatchNormMLPHead`, TLlib's convolutional head on pooled
features) followed by `output_activation`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from tljax import losses
from tljax.methods import terms
from tljax.models.heads import BatchNormMLPHead, output_activation


@terms.register_term("dd")
class DD(terms.ReversalTerm):
  """Regression disparity discrepancy with an adversarial head.

  Attributes:
    num_classes: outputs of the adversarial head: the task's factors.
    margin: `gamma` (TLlib's DD: 1).
    disparity: 'l1' (TLlib's) or 'l2'.
    head_width: hidden width of the adversarial head (TLlib: the bottleneck
      width, 512).
    head_init: its init scheme (TLlib: N(0, 0.01) weights, zero biases,
      'tllib_regressor').
    output_activation: its output activation, the main head's
      (`config.model.output_activation`; TLlib: 'sigmoid').
  """

  num_classes: int
  margin: float
  disparity: str
  head_width: int
  head_init: str
  output_activation: str
  # The disparity compares real-valued predictions; class logits have MDD.
  label_kinds = ("regression",)

  @nn.compact
  def __call__(self, outputs, *, step, train=True):
    features = jnp.concatenate([outputs.source_features, outputs.target_features])
    coeff = self.grl_coeff(step)
    adv_outputs = BatchNormMLPHead(self.num_classes, self.head_width, dtype=features.dtype,
                                   init_scheme=self.head_init, name="adv_head")(
        losses.gradient_reversal(features, coeff), train)
    adv_outputs = output_activation(self.output_activation, adv_outputs)
    n = outputs.source_features.shape[0]
    disparity = losses.regression_mdd(outputs.source_logits, adv_outputs[:n],
                                      outputs.target_logits, adv_outputs[n:],
                                      margin=self.margin, disparity=self.disparity)
    return -disparity, {"dd": disparity, "grl_coeff": coeff}
