"""M3SDA's moment matching (Peng et al., ICCV 2019): multi-source adaptation by matching feature moments.

    python -m tljax.main --config=configs/m3sda.py:digits_ms --workdir=/tmp/tljax/m3sda

Multi-source adaptation: labelled `config.source` (several, sampled per
domain), unlabelled `config.target` (Digits: synth_digits + digits ->
digits_m; other columns: `--config.source=... --config.target=...`). The first
two moments (the paper's K = 2), trade-off 1 (lambda; the paper does not
state one for its image tasks); one shared classifier, neither the authors'
code's two MCD-style classifiers nor M3SDA-beta's per-source pairs (see
tljax/methods/m3sda.py).

Office-Home (ResNet-50, the Office-31 recipe with three labelled domains):

    python -m tljax.main --config=configs/m3sda.py:office_home_ms --workdir=/tmp/tljax/m3sda_oh_A \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office_home
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_ms") -> ml_collections.ConfigDict:
  if arg not in default.MULTI_SOURCE_TASKS:
    raise ValueError(f"unknown multi-source task {arg!r}: choose one of "
                     f"{default.MULTI_SOURCE_TASKS}")
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "m3sda", "trade_off": 1.0, "moments": 2})
  return config
