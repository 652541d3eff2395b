"""DSAN (Zhu et al., "Deep Subdomain Adaptation Network for Image
Classification", IEEE TNNLS 2020).

Local MMD (`tljax.losses.lmmd`) between the source and target bottleneck
features of each class, source samples weighted by their labels and target
samples by the classifier's predictions, with the authors' five Gaussian
kernels. The authors raise its weight with the progressive schedule
`2 / (1 + exp(-10 p)) - 1` over the whole run: `trade_off_warmup` = total
steps (`configs/dsan.py` ties it to `config.total_steps`).

Two reference codes: the authors' (github.com/easezyc/deep-transfer-learning,
`UDA/pytorch1.0/DSAN`: the ramp above, stepped per epoch) and DeepDA's
`LMMDLoss` (github.com/jindongwang/transferlearning, `code/DeepDA`), whose
`LambdaSheduler` ramps per step with `gamma = 1` by default, to 0.46 at the
end. tljax follows the authors' ramp, per step. `tests/test_trajectory.py`
holds it to DeepDA's loss and loop with `gamma = 10`.
"""

from __future__ import annotations

import jax

from tljax import losses
from tljax.methods import terms


@terms.register_term("dsan")
class DSAN(terms.Term):
  """Local MMD of the features, weighted per class.

  Attributes:
    num_classes: classes of the task (set by the trainer).
    kernel_mul: ratio between the bandwidths of consecutive kernels.
    kernel_num: number of Gaussian kernels.
  """

  num_classes: int
  kernel_mul: float
  kernel_num: int

  def __call__(self, outputs, *, step, train=True):
    value = losses.lmmd(outputs.source_features, outputs.target_features, outputs.source_labels,
                        jax.nn.softmax(outputs.target_logits), num_classes=self.num_classes,
                        kernel_mul=self.kernel_mul, kernel_num=self.kernel_num)
    return value, {"lmmd": value}
