"""DANN (Ganin et al. 2016): a domain discriminator behind gradient reversal.

    python -m tljax.main --config=configs/dann.py:digits --workdir=/tmp/tljax/dann

Multi-source adaptation (`:digits_ms`, `:office_home_ms`, `:domainnet_ms`): the
labelled domains pooled into one source (the "source combine" baseline).

TLlib's DANN: discriminator 1024-1024 with BatchNorm, warm-started reversal
coefficient (alpha 1, 0 -> 1 over max_steps 1000), bottleneck Linear -> BN ->
ReLU, one pass over [source; target].

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.01, lr-gamma 0.001, wd 1e-3, batch 32, trade-off 1, bottleneck 256, 20 epochs x 1000 iterations (TLlib dann.sh)):

    python -m tljax.main --config=configs/dann.py:office31 --workdir=/tmp/tljax/dann_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31

Label sets that differ (the closed-set method as a baseline, TLlib's runs):
`synth_partial` / `synth_open_set` / `synth_universal` on the embedded digits;
`office31_partial` (TLlib's partial dann.sh: lr 0.002, batch 36, 5 epochs x
1000 iterations) and `office31_open_set` (TLlib's open-set dann.sh: lr 0.002,
batch 32, 20 epochs x 500 iterations, unknown below probability 0.9).

Regression (TLlib's `image_regression/dann.py` and `dann.sh`: the same
discriminator and reversal on a bottleneck Linear(256) -> ReLU without
BatchNorm, one pass per domain, a sigmoid head, the mean squared error, wd
1e-3, batch 36, 40 epochs), e.g. the embedded Color -> Noisy sprites:

    python -m tljax.main --config=configs/dann.py:sprites_c2n --workdir=/tmp/tljax/dann_c2n
"""

import ml_collections

from configs import default
from configs import osbp
from configs import pada


def term(task: str = "digits") -> ml_collections.ConfigDict:
  """DANN's own fields (TLlib's values)."""
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight on what reaches the features
      "hidden_sizes": (1024, 1024),
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 1.0,
      "grl_max_steps": 1000,
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  if default.is_regression(arg):
    config.method = default.terms_method("dann", "per_domain", {"dann": term(arg)})
    default.regression_recipe(config, arg, bottleneck_dim=256, bottleneck_norm=False,
                              weight_decay=1e-3, batch_size={"dsprites": 36, "mpi3d": 36},
                              epochs={"dsprites": 40, "mpi3d": 40})
    return config
  config.method = default.terms_method("dann", "joint", {"dann": term(arg)})
  if arg in default.MULTI_SOURCE_TASKS:
    default.pooled(config)  # the single-source method on the union of the sources
  if arg == "office31":
    config.total_steps = 20000
  if arg == "office31_partial":
    pada.tllib_partial_office31(config, lr=0.002, steps=5000)
  if arg == "office31_open_set":
    osbp.tllib_open_set_office31(config, lr=0.002, gamma=0.001, weight_decay=1e-3)
    config.unknown_threshold = 0.9
  return config
