"""CDAN + MCC (Jin et al. 2020, Table 6): MCC added to conditional adversarial training.

    python -m tljax.main --config=configs/cdan_mcc.py:digits --workdir=/tmp/tljax/cdan_mcc

Each term keeps its own fields: `--config.method.mcc.trade_off=0.5`,
`--config.method.cdan.entropy=True`. Any other sum of terms:
`--config=configs/combine.py:dann+entropy_min,digits`.
"""

import ml_collections

from configs import cdan
from configs import default
from configs import mcc


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = cdan.get_config(arg)
  config.method = default.terms_method("cdan+mcc", "joint", {"cdan": cdan.term(arg),
                                                             "mcc": mcc.term(arg)})
  return config
