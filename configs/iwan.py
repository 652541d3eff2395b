"""IWAN (Zhang et al. 2018): importance weights from a first discriminator (partial DA).

    python -m tljax.main --config=configs/iwan.py:synth_partial --workdir=/tmp/tljax/iwan

TLlib's IWAN: a discriminator D on stopped features gives each source example
the weight 1 - D(f_s) (normalised to mean 1); a second one, behind DANN's
warm-started reversal, aligns the domains with those weights; both 1024-1024
without BatchNorm (Dropout 0.5); trade-off 3 (1.5 x 3 on D's loss); plus the
target entropy (gamma 0.1: the `entropy_min` term); one pass over
[source; target]. Embedded task: SynthDigits -> the real digits 0-4.

Office-31 partial (ResNet-50, TLlib's hyperparameters: lr 0.0003 (iwan.sh),
lr-gamma 0.001, wd 1e-3, batch 36, bottleneck 256, 10 epochs x 1000 iterations):

    python -m tljax.main --config=configs/iwan.py:office31 --workdir=/tmp/tljax/iwan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default
from configs import entropy_min
from configs import pada


def term(task: str = "synth_partial") -> ml_collections.ConfigDict:
  """IWAN's own fields (TLlib's values)."""
  del task
  return ml_collections.ConfigDict({
      "trade_off": 3.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight on what reaches the features
      "hidden_sizes": (1024, 1024),
      "dropout": 0.5,
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 1.0,
      "grl_max_steps": 1000,
  })


def get_config(arg: str = "synth_partial") -> ml_collections.ConfigDict:
  config = default.get_config("office31_partial" if arg == "office31" else arg)
  entropy = entropy_min.term(arg)
  entropy.trade_off = 0.1  # TLlib's gamma
  config.method = default.terms_method("iwan+entropy_min", "joint",
                                       {"iwan": term(arg), "entropy_min": entropy})
  if arg == "office31":
    pada.tllib_partial_office31(config, lr=0.0003, steps=10000)
  return config
