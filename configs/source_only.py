"""Source only: train on labelled source data, evaluate on the target domain.

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/source_only

The baseline every domain-adaptation method is measured against.
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  if arg != "digits":
    raise ValueError(f"unknown task {arg!r}: configs/source_only.py knows 'digits'")
  return config
