"""Methods that regularise the target predictions or features, no adversary.

MCC (Jin et al. 2020), AFN (Xu et al. 2019) and entropy minimisation
(Grandvalet & Bengio 2005).
"""

from __future__ import annotations

from tljax import losses
from tljax.methods import register
from tljax.methods.base import Method


@register("mcc")
class MCC(Method):
  """Minimum class confusion on the target logits (temperature 2.5)."""

  trade_off: float = 1.0
  temperature: float = 2.5

  def __call__(self, outputs, *, step, train=True):
    value = losses.mcc(outputs.target_logits, temperature=self.temperature)
    return self.trade_off * value, {"mcc": value}


@register("afn")
class AFN(Method):
  """Stepwise adaptive feature norm on source and target features (`delta` per
  step; a fixed `radius` gives hard AFN), plus optional target entropy. One
  classifier pass per domain, as TLlib's AFN example."""

  trade_off: float = 0.05
  joint_forward: bool = False
  delta: float = 1.0
  radius: float | None = None
  trade_off_entropy: float = 0.0

  def __call__(self, outputs, *, step, train=True):
    norm = (losses.adaptive_feature_norm(outputs.source_features, delta=self.delta, radius=self.radius)
            + losses.adaptive_feature_norm(outputs.target_features, delta=self.delta, radius=self.radius))
    term = self.trade_off * norm
    metrics = {"feature_norm_loss": norm}
    if self.trade_off_entropy:
      ent = losses.entropy_loss(outputs.target_logits)
      term = term + self.trade_off_entropy * ent
      metrics["target_entropy"] = ent
    return term, metrics


@register("entropy_min")
class EntropyMinimization(Method):
  """Mean prediction entropy on the target batch."""

  trade_off: float = 0.1

  def __call__(self, outputs, *, step, train=True):
    value = losses.entropy_loss(outputs.target_logits)
    return self.trade_off * value, {"target_entropy": value}
