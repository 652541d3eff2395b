"""JAN (Long et al., "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017).

Joint MMD over (features, softmax(logits)) with TLlib's JAN kernels: an
adaptive Gaussian bank `alphas` on the features and one fixed `softmax_sigma`
kernel on the probabilities.
"""

from __future__ import annotations

from typing import Sequence

import jax

from tljax import losses
from tljax.methods import terms


@terms.register_term("jan")
class JAN(terms.Term):
  """JMMD of the features and the class probabilities."""

  alphas: Sequence[float]
  softmax_sigma: float
  linear: bool

  def __call__(self, outputs, *, step, train=True):
    kernels = (losses.kernel_bank(tuple(self.alphas)),
               (losses.GaussianKernel(sigma=self.softmax_sigma),))
    source = (outputs.source_features, jax.nn.softmax(outputs.source_logits))
    target = (outputs.target_features, jax.nn.softmax(outputs.target_logits))
    value = losses.jmmd(source, target, kernels=kernels, linear=self.linear)
    return value, {"jmmd": value}
