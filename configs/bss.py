"""BSS (Chen et al. 2019): fine-tuning with batch spectral shrinkage of the features.

    python -m tljax.main --config=configs/source_only.py:synth --workdir=/tmp/tljax/pretrain_synth
    python -m tljax.main --config=configs/bss.py:synth_m --workdir=/tmp/tljax/bss \\
        --config.model.init=/tmp/tljax/pretrain_synth

`eta sum_{i<=k} sigma_{-i}^2` of the batch's feature matrix. TLlib's
hyperparameters (`bss.py`): k 1, trade-off (eta) 0.001, weight decay 5e-4; the
rest of TLlib's fine-tuning recipe as in `configs/finetune.py` (tasks digits,
synth, synth_m, mnist_m, mnist_digits, office31).
"""

import ml_collections

from configs import finetune


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = finetune.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "bss", "trade_off": 0.001, "k": 1})
  return config
