"""Co-Tuning (You et al. 2020): fine-tuning that also trains the pretrained model's own head.

    python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/pretrain_synth
    python -m tljax.main --config=configs/co_tuning.py:synth_m --workdir=/tmp/tljax/co_tuning \\
        --config.model.init=/tmp/tljax/pretrain_synth

The checkpoint's head (its `num_source_classes` source classes) is kept as
`method/source_head`; the relationship p(y_s | y_t) is learnt once from its
predictions on the training split, and its cross-entropy towards
`relationship[y_t]` is added. TLlib's hyperparameters (`co_tuning.py`):
trade-off 2.3, the source head at the backbone's 0.1x rate, weight decay 5e-4;
the rest of TLlib's fine-tuning recipe as in `configs/finetune.py` (tasks
digits, synth, synth_m, mnist_m, mnist_digits, office31: ImageNet's 1000 classes).
"""

import ml_collections

from configs import finetune


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = finetune.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "co_tuning",
      "trade_off": 2.3,
      "num_source_classes": 1000 if arg == "office31" else 10,
  })
  config.param_groups = ((finetune.PRETRAINED[arg], 0.1), ("method/source_head/.*", 0.1),
                         (".*", 1.0))
  return config
