"""IRM (Arjovsky et al. 2019): IRMv1's per-domain penalty, annealed (TLlib's DG `irm.py`).

    python -m tljax.main --config=configs/irm.py:digits_dg --workdir=/tmp/tljax/irm

Domain generalisation: trained on the labelled domains of `config.source`,
tested at the end on `config.test_domains` (Digits-DG: synth_digits + digits,
held out: digits_m; other columns: `--config.source=... --config.test_domains=...`).
TLlib's values: trade-off 1 after an anneal of 500 steps with weight 1 (then
the optimizer and its cosine schedule restart), batches of 12 from each of 3
domains, lr 5e-4 (DomainNet: 0.005, 4000 x 20 steps, anneal 4000); on the
embedded task the anneal is the same 1/20 of the run.

PACS (ResNet-50; `configs/default.py` `tllib_dg`):

    python -m tljax.main --config=configs/irm.py:pacs_dg --workdir=/tmp/tljax/irm_pacs_S \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/PACS
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits_dg") -> ml_collections.ConfigDict:
  config = default.dg_config(arg, lr=5e-4, domainnet_lr=0.005, domainnet_epoch=4000)
  config.method = ml_collections.ConfigDict({
      "name": "irm",
      "trade_off": 1.0,
      "anneal_steps": 4000 if arg == "domainnet_dg" else 500,
  })
  if arg == "digits_dg":
    # TLlib's 500 of 10,000 steps, following config.total_steps.
    config.method.anneal_steps = config.get_ref("total_steps") // 20
  return config
