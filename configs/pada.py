"""PADA (Cao et al. 2018): DANN with class weights from the target's predictions (partial DA).

    python -m tljax.main --config=configs/pada.py:synth_partial --workdir=/tmp/tljax/pada

TLlib's PADA: class weights = the target's mean softmax at temperature 0.1,
divided by their maximum, recomputed every 500 steps (1 until then), on the
source cross-entropy and on DANN's adversarial loss (discriminator 1024-1024
with BatchNorm, warm-started reversal, trade-off 1); one pass over
[source; target]. Embedded task: SynthDigits (10 classes) -> the real digits
0-4 (`synth_partial`), with the optimizer every embedded method shares.

Office-31 partial (TLlib's protocol: 31 source classes, the 10 Office-Caltech
classes in the target; ResNet-50, TLlib's hyperparameters: lr 0.002, lr-gamma
0.001, wd 1e-3, batch 36, bottleneck 256, 20 epochs x 1000 iterations (TLlib pada.sh)):

    python -m tljax.main --config=configs/pada.py:office31 --workdir=/tmp/tljax/pada_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def tllib_partial_office31(config: ml_collections.ConfigDict, *, lr: float, steps: int) -> None:
  """TLlib's partial-DA Office-31 recipe (pada.py, dann.py, iwan.py): batch 36,
  lr-gamma 0.001, lr-decay 0.75, wd 1e-3, backbone at 0.1x."""
  config.batch_size = 36
  config.optimizer.learning_rate = lr
  config.optimizer.weight_decay = 1e-3
  config.schedule.gamma = 0.001
  config.schedule.power = 0.75
  config.total_steps = steps


def get_config(arg: str = "synth_partial") -> ml_collections.ConfigDict:
  config = default.get_config("office31_partial" if arg == "office31" else arg)
  config.method = ml_collections.ConfigDict({
      "name": "pada",
      "trade_off": 1.0,
      "temperature": 0.1,
      "update_every": 500,
      "hidden_sizes": (1024, 1024),
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 1.0,
      "grl_max_steps": 1000,
  })
  if arg == "office31":
    tllib_partial_office31(config, lr=0.002, steps=20000)
  return config
