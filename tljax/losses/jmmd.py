"""Joint MMD of JAN (Long et al., "Deep Transfer Learning with Joint Adaptation
Networks", ICML 2017), TLlib's `JointMultipleKernelMaximumMeanDiscrepancy`.

JMMD compares the joint distributions of several layers' activations, e.g.
`(features, softmax(logits))`, with the product kernel

    k((x^1..x^L), (y^1..y^L)) = prod_l sum_{u in layer l} k_lu(x^l, y^l),

estimated with the same index matrix and `+ 2/(n-1)` as MK-MMD (see
`tljax.losses.mmd`). With a single layer it is `mk_mmd`.
"""

from __future__ import annotations

from typing import Sequence

import jax

from tljax.losses.kernels import GaussianKernel
from tljax.losses.mmd import kernel_mmd


def jmmd(source_layers: Sequence[jax.Array],
         target_layers: Sequence[jax.Array],
         *,
         kernels: Sequence[Sequence[GaussianKernel]],
         linear: bool = False) -> jax.Array:
  """Joint multi-kernel MMD over a list of layers (JAN), TLlib's estimator.

  Args:
    source_layers: per layer, `(n, *)` source activations, e.g.
      `(features_s, softmax(logits_s))`; TLlib's JAN example passes the softmax
      with its gradient.
    target_layers: per layer, `(n, *)` target activations.
    kernels: per layer, the Gaussian kernels summed on it. TLlib's JAN
      example: the adaptive bank `alpha = 2^-3..2^1` on the features and one
      fixed `sigma = 0.92` kernel on the softmax.
    linear: the linear-time estimator (TLlib's `--linear`; its example default
      is the quadratic one).

  Returns:
    Scalar estimate of `JMMD^2 + 2/(n-1)`.
  """
  return kernel_mmd(source_layers, target_layers, kernels, linear=linear)


__all__ = ["jmmd"]
