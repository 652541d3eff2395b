"""The source loss alone, with the target batch through the network beside the
source batch (one pass over [source; target]): BatchNorm trains on both domains.

    python -m tljax.main --config=configs/source_only_joint_bn.py:digits --workdir=/tmp/tljax/joint_bn

The setting of TLlib's DANN-style methods (DANN, CDAN, MCC, ...) with the
adaptation term removed, so the difference between it and a method isolates
the term; the difference between it and `source_only` is what target batch
statistics alone do. Not a "no adaptation" baseline.
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("source_only_joint_bn", "joint", {"source_only_joint_bn": {}})
  return config
