"""The oracle: the network trained on *labelled target* data, the ceiling that
unsupervised adaptation is measured against.

    python -m tljax.main --config=configs/target_oracle.py:synth --workdir=/tmp/tljax/oracle_synth

ERM (the source_only method) with the target domain as its labelled data:
trained on the target `train` split with labels, evaluated on the target `test`
split (Office-31: 80% / 20% of the domain; held out, so not the transductive `all` that the adaptation runs
report; both estimate accuracy on unseen target images). Same network,
optimizer and budget as the other methods of the task (regression: ERM's
regressor and recipe, e.g. `configs/target_oracle.py:sprites_c2n`).
"""

import ml_collections

from configs import default
from configs import source_only


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  config.source = config.target
  # Office-31 domains have one split: 80% to train on, 20% held out.
  train, test = ("train[:80%]", "train[80%:]") if arg == "office31" else ("train", "test")
  config.source_split = config.target_split = train
  config.eval_source_split = config.eval_target_split = config.source_val_split = test
  if default.is_regression(arg):
    source_only.erm_regression(config, arg)  # ERM's regressor, on the target's labels
  return config
