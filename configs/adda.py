"""ADDA (Tzeng et al. 2017): a target encoder adapted against a domain discriminator.

    python -m tljax.main --config=configs/adda.py:digits --workdir=/tmp/tljax/adda

The run first trains the classifier on the source alone (`method.pretrain_steps`,
TLlib's 3 pre-training epochs of 23 in all, at `pretrain_lr_scale` x the
learning rate), then copies its encoder (backbone + bottleneck) into a target
encoder that alone is trained, against a domain discriminator (1024-1024 with
BatchNorm), while the source classifier stays frozen with its BatchNorm
running statistics. Evaluation uses the target encoder with the source head.

TLlib's objective (`method.objective='tllib'`): DANN's loss behind a
warm-started gradient reversal (alpha 1, 0 -> 2 over 1000 steps), one
optimizer over the target encoder and the discriminator. The paper's
objective, `--config.method.objective=paper`: a discriminator step, then an
encoder step with inverted labels, with two optimizers.

The pre-training as its own run, any source_only run of the same network:

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/pre
    python -m tljax.main --config=configs/adda.py:digits --workdir=/tmp/tljax/adda2 \\
        --config.model.init=/tmp/tljax/pre --config.method.pretrain_steps=0

Digits (TLlib's digits recipe: lr 0.01, pre-training lr 0.001; the batch and
step budget are tljax's shared digits setting).

Office-31 (ResNet-50, TLlib's hyperparameters: lr 0.001, pre-training lr
0.001 for 3 epochs x 1000 iterations, lr-gamma 0.0003, wd 1e-3, batch 32,
bottleneck 256, 20 adversarial epochs x 1000 iterations (TLlib adda.sh)):

    python -m tljax.main --config=configs/adda.py:office31 --workdir=/tmp/tljax/adda_a2w \\
        --config.model.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31

(from a source_only Office-31 run instead: train it with
`--config.model.bottleneck_dim=256`, then pass its workdir as
`--config.model.init` with `--config.model.dont_load='()'
--config.method.pretrain_steps=0`).
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  office = arg == "office31"
  config.method = ml_collections.ConfigDict({
      "name": "adda",
      # TLlib: 3 of 23 epochs pre-train (3,000 of 23,000 steps on Office-31).
      "pretrain_steps": 3000 if office else 250,
      "pretrain_lr_scale": 1.0 if office else 0.1,  # pretrain-lr / lr
      "objective": "tllib",  # or "paper"
      "hidden_sizes": (1024, 1024),
      "grl_alpha": 1.0,
      "grl_lo": 0.0,
      "grl_hi": 2.0,
      "grl_max_steps": 1000,
  })
  # Shown when a run without model.init needs one (method.pretrain_steps=0).
  config.model.init_recipe = (
      f"Pre-train in a source_only run, then start from its workdir: `python -m tljax.main "
      f"--config=configs/source_only.py:{arg} --workdir=/tmp/tljax/pre` then `python -m "
      f"tljax.main --config=configs/adda.py:{arg} --workdir=/tmp/tljax/adda2 "
      f"--config.model.init=/tmp/tljax/pre --config.method.pretrain_steps=0`; or keep "
      f"method.pretrain_steps > 0.")
  if office:
    config.model.init_recipe = (
        "Pass ImageNet weights (--config.model.init=/path/to/resnet50.safetensors; the README's "
        "'Office-31 A→W with ResNet-50' converts torchvision's), or, with "
        "--config.method.pretrain_steps=0 --config.model.dont_load='()', a source_only "
        "Office-31 run's workdir trained with --config.model.bottleneck_dim=256 "
        "(configs/adda.py).")
    config.optimizer.learning_rate = 0.001
    config.schedule.gamma = 0.0003
    config.total_steps = 23000
    # Both encoders' backbones fine-tune at 0.1x, as TLlib's get_parameters.
    config.param_groups = (("classifier/backbone/.*", 0.1), ("method/target/backbone/.*", 0.1),
                           (".*", 1.0))
  return config
