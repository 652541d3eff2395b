"""BNM (Cui et al. 2020): batch nuclear-norm maximisation on the target predictions.

    python -m tljax.main --config=configs/bnm.py:digits --workdir=/tmp/tljax/bnm
    python -m tljax.main --config=configs/combine.py:cdan+bnm,digits --workdir=/tmp/tljax/cdan_bnm

The authors' BNM (github.com/cuishuhao/BNM, DA/BNM/train_image.py): trade-off
1, the loss `-mean(singular values of softmax(target logits))`, i.e. the
nuclear norm divided by min(batch, classes) (`normalisation='singular_values'`;
the paper's Eq. 9 divides by the batch size: `normalisation='batch'`), one
pass per domain. Not in TLlib.

Office-31 (ResNet-50, the authors' hyperparameters for A -> W: lr 0.001 for
the backbone and 0.01 for the new head, no bottleneck, SGD + nesterov,
inverse schedule gamma 0.001 power 0.75, batch 36, 6000 iterations; weight
decay as tljax's Office-31 default, 1e-3 (5e-4 x their decay_mult 2)):

    python -m tljax.main --config=configs/bnm.py:office31 --workdir=/tmp/tljax/bnm_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "normalisation": "singular_values",  # the authors' code; "batch": the paper's 1/B
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("bnm", "per_domain", {"bnm": term(arg)})
  if arg == "office31":
    config.optimizer.learning_rate = 0.01  # x0.1 on the backbone: the authors' 0.001 / 0.01
    config.model.bottleneck_dim = 0
    config.model.dont_load = ("head/.*",)
    config.batch_size = 36
    config.total_steps = 6000
  return config
