"""L2-SP (Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer
Learning with Convolutional Networks", ICML 2018): fine-tuning pulled back to
the pretrained weights.

    loss = CE + alpha/2 |w_pre - w0|^2 + beta/2 |w_new|^2

`w_pre` are the parameters the pretrained model provides (a regex,
`pretrained`), `w0` their values when training starts (after
`config.model.init` is loaded; kept in `method_state`), and `w_new` the
classifier's other parameters (the new head). TLlib's version is its DELTA
script with `--regularization-type l2_sp` (`SPRegularization` on the backbone,
`L2Regularization` on the head and bottleneck, both weighted 0.01, weight decay
0). A fine-tuning method: it reads only the labelled task data (`source`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.traverse_util

from tljax import losses
from tljax.methods import base, register, terms


def classifier_partition(params: Any, pretrained: str) -> tuple[dict, dict]:
  """`(pretrained, new)`: the classifier's parameters whose '/'-joined path
  (`classifier/backbone/...`) `pretrained` matches, and the others."""
  pattern = re.compile(pretrained)
  flat = flax.traverse_util.flatten_dict({"classifier": params["classifier"]})
  marked = {p: bool(pattern.fullmatch("/".join(p))) for p in flat}
  unflatten = flax.traverse_util.unflatten_dict
  return (unflatten({p: v for p, v in flat.items() if marked[p]}),
          unflatten({p: v for p, v in flat.items() if not marked[p]}))


def check_pretrained_regex(params: Any, pretrained: str) -> None:
  """A `pretrained` regex that matches no parameter is a configuration error."""
  matched, _ = classifier_partition(params, pretrained)
  if not matched:
    names = sorted("/".join(p) for p in flax.traverse_util.flatten_dict(
        {"classifier": params["classifier"]}))
    raise ValueError(f"config.method.pretrained={pretrained!r} matches no parameter; they are "
                     f"named like {', '.join(names[:4])}, ...")


@register("l2_sp")
@dataclasses.dataclass(frozen=True, kw_only=True)
class L2SP(base.Method):
  """Cross-entropy plus the starting-point penalty and an L2 penalty on the new parameters.

  Attributes:
    pretrained: regex over parameter paths: those pulled towards their
      starting values (TLlib: the backbone).
    trade_off_backbone: alpha (TLlib 0.01; the paper 0.1).
    trade_off_head: beta, on the classifier's other parameters (TLlib 0.01).
  """

  inputs = ("source",)

  pretrained: str
  trade_off_backbone: float
  trade_off_head: float

  def init_method_state(self, ctx, variables):
    check_pretrained_regex(variables["params"], self.pretrained)
    starting_point, _ = classifier_partition(variables["params"], self.pretrained)
    return {"starting_point": starting_point}

  def regularization(self, params: Any, method_state: Any) -> tuple[Any, dict]:
    pretrained, new = classifier_partition(params, self.pretrained)
    sp = losses.starting_point_l2(pretrained, method_state["starting_point"])
    head = losses.l2(new)
    return (self.trade_off_backbone * sp + self.trade_off_head * head,
            {"l2_sp": sp, "l2_head": head})

  def train_step(self, ctx, state, batch, rng):
    def loss_fn(variables):
      cls_loss, (variables, metrics) = terms.source_only_loss(ctx, variables, batch, rng)
      penalty, penalty_metrics = self.regularization(variables["params"], state.method_state)
      return cls_loss + penalty, (variables, {**metrics, **penalty_metrics,
                                              "transfer_loss": penalty})

    return ctx.update(state, "main", loss_fn)
