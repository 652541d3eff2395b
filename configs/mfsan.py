"""MFSAN (Zhu et al., AAAI 2019): one branch per labelled domain, each aligned to the target, agreeing on it.

    python -m tljax.main --config=configs/mfsan.py:digits_ms --workdir=/tmp/tljax/mfsan

Multi-source adaptation (see `configs/m3sda.py` for the task). The authors'
settings: branches of width 256 (the classifier's `multi_source` head, on
the backbone's pooled features), the alignment terms weighted 1 under the
progressive schedule over the whole run, the target predicted by the mean of
the branches' softmax outputs (see tljax/methods/mfsan.py for what differs
from their code).

Office-Home (ResNet-50; the authors: lr 0.01 for the branches, 0.001 for the backbone):

    python -m tljax.main --config=configs/mfsan.py:office_home_ms --workdir=/tmp/tljax/mfsan_oh_A \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office_home
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_ms") -> ml_collections.ConfigDict:
  if arg not in default.MULTI_SOURCE_TASKS:
    raise ValueError(f"unknown multi-source task {arg!r}: choose one of "
                     f"{default.MULTI_SOURCE_TASKS}")
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "mfsan", "trade_off": 1.0,
                                             "trade_off_warmup": 0})
  config.method.trade_off_warmup = config.get_ref("total_steps")  # the whole run
  config.model.head_type = "multi_source"
  config.model.head_hidden = 256
  config.model.bottleneck_dim = 0  # the branches are the domain-specific bottlenecks
  config.model.dont_load = ("head/.*",)
  return config
