"""DAN (Long et al. 2015): multi-kernel MMD between the domains' bottleneck features.

    python -m tljax.main --config=configs/dan.py:digits --workdir=/tmp/tljax/dan

Multi-source adaptation (`:digits_ms`, `:office_home_ms`, `:domainnet_ms`): the
labelled domains pooled into one source (the "source combine" baseline).

TLlib's DAN: Gaussian kernels with bandwidth multipliers 2^-3..2^1, the
linear-time estimator, one classifier pass per domain, bottleneck Linear ->
ReLU -> Dropout(0.5) (no BatchNorm). `kernel_weights='optimized'` solves the
paper's beta on every batch; `layers=('features', 'logits')` aligns the
logits too, as the paper does.

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.003, lr-gamma 0.0003, wd 5e-4, batch 32, trade-off 1, 20 epochs x 500 iterations (TLlib dan.sh)):

    python -m tljax.main --config=configs/dan.py:office31 --workdir=/tmp/tljax/dan_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31
"""

import ml_collections

from configs import default


def term(task: str = "digits") -> ml_collections.ConfigDict:
  del task
  return ml_collections.ConfigDict({
      "trade_off": 1.0,
      "trade_off_warmup": 0,  # >0: JAN's progressive weight over this many steps
      "alphas": (0.125, 0.25, 0.5, 1.0, 2.0),
      "linear": True,
      "layers": ("features",),
      "kernel_weights": "equal",  # or 'optimized' (the paper's beta)
  })


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.method = default.terms_method("dan", "per_domain", {"dan": term(arg)})
  config.model.bottleneck_norm = False
  config.model.bottleneck_dropout = 0.5
  if arg in default.MULTI_SOURCE_TASKS:
    default.pooled(config)  # the single-source method on the union of the sources
  if arg == "office31":
    default.tllib_dan_office31(config)
  return config
