"""L2-SP (Li et al. 2018): fine-tuning pulled back to the pretrained weights.

    python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/pretrain_synth
    python -m tljax.main --config=configs/l2_sp.py:synth_m --workdir=/tmp/tljax/l2_sp \\
        --config.model.init=/tmp/tljax/pretrain_synth

`alpha/2 |w - w0|^2` on the parameters the checkpoint provides (`pretrained`:
backbone and bottleneck of a tljax run) plus `beta/2 |w|^2` on the new head.
TLlib's hyperparameters (its `delta.py --regularization-type l2_sp`):
trade-off-backbone (alpha) 0.01, trade-off-head (beta) 0.01, weight decay 0
(the penalties replace it); the rest of TLlib's fine-tuning recipe as in
`configs/finetune.py` (tasks digits, synth, synth_m, mnist_m, mnist_digits, office31).
"""

import ml_collections

from configs import finetune


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = finetune.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "l2_sp",
      "pretrained": finetune.PRETRAINED[arg],
      "trade_off_backbone": 0.01,  # alpha; the paper uses 0.1
      "trade_off_head": 0.01,  # beta
  })
  config.optimizer.weight_decay = 0.0
  return config
