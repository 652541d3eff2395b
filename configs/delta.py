"""DELTA (Li et al. 2019): fine-tuning that keeps feature maps near the starting network's.

    python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/pretrain_synth
    python -m tljax.main --config=configs/delta.py:synth_m --workdir=/tmp/tljax/delta \\
        --config.model.init=/tmp/tljax/pretrain_synth

The outputs of `layers` (the small CNN's three convolutions; on ResNet-50,
TLlib's last `conv3` of each stage) are compared with the starting network's
on each batch, every channel weighted by its attention (how much a classifier
on the starting features loses when the channel is zeroed; see
tljax/methods/delta.py), plus an L2 penalty on the new head.
`--config.method.regularization=feature_map` drops the attention. TLlib's
hyperparameters (`delta.py`): regularization attention_feature_map,
trade-off-backbone 0.01, trade-off-head 0.01, weight decay 0, attention softmax
temperature 5; the rest of TLlib's fine-tuning recipe as in
`configs/finetune.py` (tasks digits, synth, synth_m, mnist_m, mnist_digits,
office31). TLlib trains the attention classifier with SGD at lr 0.01 for 10
epochs of batches of 32; here it is fitted by full-batch SGD on the frozen
starting features (300 steps at 0.1).
"""

import ml_collections

from configs import finetune

LAYERS = {"office31": "backbone/(layer1_2|layer2_3|layer3_5|layer4_2)/conv3"}


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = finetune.get_config(arg)
  config.method = ml_collections.ConfigDict({
      "name": "delta",
      "regularization": "attention_feature_map",  # or feature_map
      "layers": LAYERS.get(arg, "backbone/conv[0-9]+"),
      "pretrained": finetune.PRETRAINED[arg],
      "trade_off_backbone": 0.01,
      "trade_off_head": 0.01,
      "attention_steps": 300,
      "attention_lr": 0.1,
      "attention_temperature": 5.0,
  })
  config.optimizer.weight_decay = 0.0
  return config
