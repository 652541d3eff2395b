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

from tljax.losses.kernels import GaussianKernel, kernel_bank
from tljax.losses.mmd import kernel_mmd

# TLlib's JAN example: the softmax layer gets one fixed-bandwidth kernel,
# GaussianKernel(sigma=0.92, track_running_stats=False).
JAN_SOFTMAX_SIGMA = 0.92


def jan_kernels(num_layers: int = 2) -> tuple[tuple[GaussianKernel, ...], ...]:
  """TLlib's JAN kernels: the adaptive bank `2^-3..2^1` on the first layer and
  one Gaussian with `sigma = 0.92` on every later (softmax) layer."""
  fixed = (GaussianKernel(sigma=JAN_SOFTMAX_SIGMA),)
  return (kernel_bank(),) + (fixed,) * (num_layers - 1)


def jmmd(source_layers: Sequence[jax.Array],
         target_layers: Sequence[jax.Array],
         *,
         kernels: Sequence[Sequence[GaussianKernel]] | None = None,
         linear: bool = False) -> jax.Array:
  """Joint multi-kernel MMD over a list of layers (JAN), TLlib's estimator.

  Args:
    source_layers: per layer, `(n, *)` source activations, e.g.
      `(features_s, softmax(logits_s))`; TLlib's JAN example passes the softmax
      with its gradient.
    target_layers: per layer, `(n, *)` target activations.
    kernels: per layer, the Gaussian kernels summed on it. Default
      `jan_kernels(len(source_layers))`, TLlib's JAN example.
    linear: the linear-time estimator (TLlib's `--linear`; its example default
      is the quadratic one).

  Returns:
    Scalar estimate of `JMMD^2 + 2/(n-1)`.
  """
  if kernels is None:
    kernels = jan_kernels(len(source_layers))
  return kernel_mmd(source_layers, target_layers, kernels, linear=linear)


__all__ = ["JAN_SOFTMAX_SIGMA", "jan_kernels", "jmmd"]
