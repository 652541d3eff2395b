"""AdaBN (Li et al., "Revisiting Batch Normalization for Practical Domain
Adaptation", 2016): ERM, evaluated with BatchNorm statistics recomputed on the
target training split.

    python -m tljax.main --config=configs/adabn.py:digits --workdir=/tmp/tljax/adabn

Training is exactly `source_only`'s (source batch alone through the network);
only evaluation differs.
"""

import ml_collections

from configs import default
from configs import source_only


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "adabn"})
  if arg == "office31":
    source_only.erm_office31(config)
  if default.is_regression(arg):
    source_only.erm_regression(config, arg)
  return config
