"""Methods that add a statistical discrepancy between the domains' features.

DDC (Tzeng et al. 2014): single-kernel MMD. DAN (Long et al. 2015): MK-MMD on
one or several layers. JAN (Long et al. 2017): joint MMD of (features,
softmax). Deep CORAL (Sun & Saenko 2016) and CMD (Zellinger et al. 2017).
Each returns `trade_off * discrepancy`; the losses are in `tljax.losses`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from tljax import losses
from tljax.methods import register
from tljax.methods.base import DomainOutputs, Method

_LAYERS = ("features", "logits", "probs")


def _layer(outputs: DomainOutputs, name: str) -> tuple[jax.Array, jax.Array]:
  if name == "features":
    return outputs.source_features, outputs.target_features
  if name == "logits":
    return outputs.source_logits, outputs.target_logits
  if name == "probs":
    return jax.nn.softmax(outputs.source_logits), jax.nn.softmax(outputs.target_logits)
  raise ValueError(f"unknown layer {name!r}; choose from {_LAYERS}")


@register("ddc")
class DDC(Method):
  """MMD with one Gaussian kernel (bandwidth `alpha` x the batch's mean distance,
  or a fixed `sigma`) on `layer`."""

  trade_off: float = 1.0
  alpha: float = 1.0
  sigma: float | None = None
  linear: bool = False
  layer: str = "features"

  def __call__(self, outputs, *, step, train=True):
    source, target = _layer(outputs, self.layer)
    value = losses.mmd(source, target, alpha=self.alpha, sigma=self.sigma, linear=self.linear)
    return self.trade_off * value, {"mmd": value}


@register("dan")
class DAN(Method):
  """MK-MMD (TLlib's `MultipleKernelMaximumMeanDiscrepancy`), summed over `layers`.

  TLlib's DAN example defaults: linear-time estimator, one classifier pass per
  domain, bottleneck without BatchNorm (`config.model.bottleneck_norm=False`).

  Attributes:
    alphas: bandwidth multipliers of the Gaussian kernels (TLlib: 2**-3..2**1).
    linear: the linear-time estimator (TLlib's default) or the quadratic one.
    layers: which outputs to align; the paper aligns the last layers
      (`('features', 'logits')`), TLlib's example the bottleneck only.
    kernel_weights: 'equal' (TLlib: the kernels are summed) or 'optimized' (the
      DAN paper's beta maximising the test power, re-solved on every batch with
      the gradient stopped).
  """

  trade_off: float = 1.0
  joint_forward: bool = False
  alphas: Sequence[float] = losses.DEFAULT_ALPHAS
  linear: bool = True
  layers: Sequence[str] = ("features",)
  kernel_weights: str = "equal"

  def __call__(self, outputs, *, step, train=True):
    if self.kernel_weights not in ("equal", "optimized"):
      raise ValueError(f"dan: kernel_weights must be 'equal' or 'optimized', got {self.kernel_weights!r}")
    total, metrics = 0.0, {}
    for name in self.layers:
      source, target = _layer(outputs, name)
      weights = None
      if self.kernel_weights == "optimized":
        weights = jax.lax.stop_gradient(
            losses.dan_kernel_weights(source, target, alphas=tuple(self.alphas)))
      value = losses.mk_mmd(source, target, alphas=tuple(self.alphas), linear=self.linear,
                            kernel_weights=weights)
      metrics[f"mk_mmd_{name}"] = value
      total = total + value
    return self.trade_off * total, metrics


@register("jan")
class JAN(Method):
  """Joint MMD over (features, softmax(logits)) with TLlib's JAN kernels: Gaussian
  banks `alphas` on the features and a fixed `softmax_sigma` kernel on the
  probabilities."""

  trade_off: float = 1.0
  alphas: Sequence[float] = losses.DEFAULT_ALPHAS
  softmax_sigma: float = 0.92
  linear: bool = False

  def __call__(self, outputs, *, step, train=True):
    kernels = ([losses.GaussianKernel(alpha=a) for a in self.alphas],
               [losses.GaussianKernel(sigma=self.softmax_sigma)])
    source = (outputs.source_features, jax.nn.softmax(outputs.source_logits))
    target = (outputs.target_features, jax.nn.softmax(outputs.target_logits))
    value = losses.jmmd(source, target, kernels=kernels, linear=self.linear)
    return self.trade_off * value, {"jmmd": value}


@register("deep_coral")
class DeepCORAL(Method):
  """CORAL on `layer`: TLlib's form (mean + covariance differences, averaged) or
  the paper's `||C_s - C_t||_F^2 / (4 d^2)` (`form='paper'`)."""

  trade_off: float = 1.0
  form: str = "tllib"
  layer: str = "features"

  def __call__(self, outputs, *, step, train=True):
    source, target = _layer(outputs, self.layer)
    value = losses.coral(source, target, form=self.form)
    return self.trade_off * value, {"coral": value}


@register("cmd")
class CMD(Method):
  """Central moment discrepancy up to `order` on `layer`.

  CMD's normalisation assumes activations bounded in `bounds` (the paper's
  hidden layer is a sigmoid, in [0, 1]); the bottleneck here ends in a ReLU, so
  by default (`squash='sigmoid'`) the features are passed through a sigmoid
  before the moments are matched. `squash='none'` uses them as they are.
  """

  trade_off: float = 1.0
  order: int = 5
  bounds: Sequence[float] = (0.0, 1.0)
  layer: str = "features"
  squash: str = "sigmoid"

  def __call__(self, outputs, *, step, train=True):
    source, target = _layer(outputs, self.layer)
    if self.squash == "sigmoid":
      source, target = jax.nn.sigmoid(source), jax.nn.sigmoid(target)
    elif self.squash != "none":
      raise ValueError(f"cmd: squash must be 'sigmoid' or 'none', got {self.squash!r}")
    value = losses.cmd(source, target, order=self.order, bounds=tuple(self.bounds))
    return self.trade_off * value, {"cmd": value}
