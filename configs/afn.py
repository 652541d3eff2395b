"""AFN (Xu et al. 2019): stepwise adaptive feature norm.

    python -m tljax.main --config=configs/afn.py:digits --workdir=/tmp/tljax/afn

TLlib's AFN: feature norms pushed up by delta=1 per step (weight 0.05), one
classifier pass per domain, bottleneck Linear -> BN -> ReLU -> Dropout(0.5)
with the L2-preserving dropout (kept units scaled by 1/sqrt(1-p)), N(0, 0.01)
bottleneck and head layers (`init_scheme='tllib_afn'`), and SGD without
nesterov in which the backbone group has no momentum (bottleneck and head
0.9). On Office-31 the target entropy is added (`afn+entropy_min`, 0.1) and
the learning rate is constant.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.001 constant, no nesterov, wd 5e-4, batch 32, bottleneck 1000, trade-off-norm 0.05, trade-off-entropy 0.1, 20 epochs x 500 iterations (TLlib afn.sh)):

    python -m tljax.main --config=configs/afn.py:office31 --workdir=/tmp/tljax/afn_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31

Partial DA: `synth_partial` on the embedded digits, `office31_partial` with
TLlib's partial afn.sh (the Office-31 recipe above on its class subset).
"""

import ml_collections

from configs import default
from configs import entropy_min


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 0.05,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "delta": 1.0,
      "radius": ml_collections.config_dict.placeholder(float),  # a number: hard AFN
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  office = arg in ("office31", "office31_partial")
  if office:
    entropy = entropy_min.term(arg)
    entropy.trade_off = 0.1
    config.method = default.terms_method("afn+entropy_min", "per_domain",
                                         {"afn": term(arg), "entropy_min": entropy})
  else:
    config.method = default.terms_method("afn", "per_domain", {"afn": term(arg)})
  config.model.bottleneck_dropout = 0.5
  config.model.bottleneck_l2_preserving_dropout = True
  config.model.init_scheme = "tllib_afn"
  # TLlib's AFN optimizer: SGD(momentum 0 by default) with momentum 0.9 for the
  # bottleneck and head groups only.
  config.optimizer.nesterov = False
  config.param_groups = (("classifier/backbone/.*", {"momentum": 0.0}), (".*", 1.0))
  if office:
    config.optimizer.learning_rate = 0.001
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "constant"
    config.model.bottleneck_dim = 1000
    config.total_steps = 10000
  return config
