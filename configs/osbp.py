"""OSBP (Saito et al. 2018): a K+1-way classifier and an adversarial unknown boundary (open-set DA).

    python -m tljax.main --config=configs/osbp.py:synth_open_set --workdir=/tmp/tljax/osbp

TLlib's OSBP: the head's "unknown" output is pushed to probability t = 0.5
on target examples, the features (through a reversal layer before the head)
away from it; trade-off 1; one pass per domain; its bottleneck of two blocks
Linear -> BN -> ReLU -> Dropout(0.5); evaluation by the arg-max over the
K + 1 outputs. Embedded task: SynthDigits 0-5 -> all real digits, 6-9 unknown.

Office-31 open-set (TLlib's protocol: the first 20 classes known, the other 11
unknown target classes; ResNet-50, TLlib's hyperparameters: lr 0.001,
lr-gamma 0.0003, wd 5e-4, batch 32, bottleneck 256, 20 epochs x 500 iterations (TLlib osbp.sh)):

    python -m tljax.main --config=configs/osbp.py:office31 --workdir=/tmp/tljax/osbp_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def tllib_open_set_office31(config: ml_collections.ConfigDict, *, lr: float, gamma: float,
                            weight_decay: float) -> None:
  """TLlib's open-set Office-31 recipe (erm.py, dann.py, osbp.py): batch 32,
  20 epochs x 500 iterations, lr-decay 0.75, backbone at 0.1x."""
  config.batch_size = 32
  config.optimizer.learning_rate = lr
  config.optimizer.weight_decay = weight_decay
  config.schedule.gamma = gamma
  config.schedule.power = 0.75
  config.total_steps = 10000


def get_config(arg: str = "synth_open_set") -> ml_collections.ConfigDict:
  config = default.get_config("office31_open_set" if arg == "office31" else arg)
  config.method = ml_collections.ConfigDict({
      "name": "osbp",
      "trade_off": 1.0,
      "unknown_boundary": 0.5,
  })
  # TLlib's osbp.ImageClassifier bottleneck.
  config.model.bottleneck_layers = 2
  config.model.bottleneck_dropout = 0.5
  if arg == "office31":
    tllib_open_set_office31(config, lr=0.001, gamma=0.0003, weight_decay=5e-4)
  return config
