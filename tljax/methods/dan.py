"""DAN (Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML 2015).

MK-MMD (TLlib's `MultipleKernelMaximumMeanDiscrepancy`) between the domains'
activations, summed over `layers`. TLlib's DAN example: linear-time estimator,
one classifier pass per domain, bottleneck without BatchNorm
(`config.model.bottleneck_norm=False`).
"""

from __future__ import annotations

from typing import Sequence

import jax

from tljax import losses
from tljax.methods import terms

KERNEL_WEIGHTS = ("equal", "optimized")


@terms.register_term("dan")
class DAN(terms.Term):
  """MK-MMD summed over `layers`.

  Attributes:
    alphas: bandwidth multipliers of the Gaussian kernels (TLlib: 2**-3..2**1).
    linear: the linear-time estimator (TLlib's default) or the quadratic one.
    layers: which outputs to align; the paper aligns the last layers
      (`('features', 'logits')`), TLlib's example the bottleneck only.
    kernel_weights: 'equal' (TLlib: the kernels are summed) or 'optimized' (the
      DAN paper's beta maximising the test power, re-solved on every batch with
      the gradient stopped).
  """

  alphas: Sequence[float]
  linear: bool
  layers: Sequence[str]
  kernel_weights: str

  def __call__(self, outputs, *, step, train=True):
    if self.kernel_weights not in KERNEL_WEIGHTS:
      raise ValueError(f"dan: kernel_weights must be one of {KERNEL_WEIGHTS}, "
                       f"got {self.kernel_weights!r}")
    total, metrics = 0.0, {}
    for name in self.layers:
      source, target = terms.layer(outputs, name)
      weights = None
      if self.kernel_weights == "optimized":
        weights = jax.lax.stop_gradient(
            losses.dan_kernel_weights(source, target, alphas=tuple(self.alphas)))
      value = losses.mk_mmd(source, target, alphas=tuple(self.alphas), linear=self.linear,
                            kernel_weights=weights)
      metrics[f"mk_mmd_{name}"] = value
      total = total + value
    return total, metrics
