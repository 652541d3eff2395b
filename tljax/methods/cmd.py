"""CMD (Zellinger et al., "Central Moment Discrepancy (CMD) for Domain-Invariant
Representation Learning", ICLR 2017).

With the default `bounds=(0, 1)` the paper's normalisation is 1 and the loss
is the authors' code's (`mmatch`, github.com/wzell/cmd), which
`tests/test_trajectory.py` holds it to.
"""

from __future__ import annotations

from typing import Sequence

import jax

from tljax import losses
from tljax.methods import terms

SQUASHES = ("sigmoid", "none")


@terms.register_term("cmd")
class CMD(terms.Term):
  """Central moment discrepancy up to `order` on `layer`.

  CMD's normalisation assumes activations bounded in `bounds` (the paper's
  hidden layer is a sigmoid, in [0, 1]); the bottleneck here ends in a ReLU, so
  `squash='sigmoid'` passes the features through a sigmoid before the moments
  are matched. `squash='none'` uses them as they are.
  """

  order: int
  bounds: Sequence[float]
  layer: str
  squash: str

  def __call__(self, outputs, *, step, train=True):
    source, target = terms.layer(outputs, self.layer)
    if self.squash == "sigmoid":
      source, target = jax.nn.sigmoid(source), jax.nn.sigmoid(target)
    elif self.squash != "none":
      raise ValueError(f"cmd: squash must be one of {SQUASHES}, got {self.squash!r}")
    value = losses.cmd(source, target, order=self.order, bounds=tuple(self.bounds))
    return value, {"cmd": value}
