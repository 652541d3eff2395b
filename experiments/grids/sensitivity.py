"""How much the initialiser, the batch size and rounding move ERM and DANN, on both embedded tasks.

    python -m tljax.sweep launch --grid=experiments/grids/sensitivity.py \
        --out=/tmp/tljax/sweeps/sensitivity --parallel=2
    python -m tljax.sweep collect --grid=experiments/grids/sensitivity.py \
        --out=/tmp/tljax/sweeps/sensitivity --to=experiments/results/sensitivity \
        --title="Sensitivity: initialiser, batch size, rounding"

Rows are (method, variant), columns the two tasks. Variants change one thing
against the shared recipe (flax's default convolution initialiser, batch 64
per domain, 2,000 steps at the same learning rate):

  torch_init  the convolutions start from PyTorch's `Conv2d` default
              (`model.backbone_kwargs.kernel_init=torch`)
  batch32     32 source + 32 target examples per step
  batch128    128 + 128 per step
  xla_conv    the convolutions' kernel gradients from XLA's own convolution
              (`model.backbone_kwargs.conv_impl=xla`) instead of the CPU
              default's sum over slices of 32 examples: the same function,
              rounded differently

A difference between a variant and `base` smaller than the spread over seeds
says the published numbers do not depend on that choice; a larger one says a
comparison across code bases must match it. `collect` compares each variant
with its method's `base` row (95% Student-t intervals over the 3 seeds).
"""

METHODS = ("source_only", "dann")
VARIANTS = {
    "base": {},
    "torch_init": {"model.backbone_kwargs.kernel_init": "torch"},
    "batch32": {"batch_size": 32},
    "batch128": {"batch_size": 128},
    "xla_conv": {"model.backbone_kwargs.conv_impl": "xla"},
}
# configs/default.py's `synth` task, as overrides of the `digits` one.
SYNTH = {"source": "synth_digits", "target": "digits_full", "target_split": "all",
         "eval_target_split": "all"}


def get_grid():
  return {
      "methods": {f"{m}+{v}": {"config": f"configs/{m}.py:digits", "overrides": overrides}
                  for m in METHODS for v, overrides in VARIANTS.items()},
      "tasks": {"Digits→Digits-M": {}, "Synth→Digits": SYNTH},
      "seeds": [0, 1, 2],
      "baselines": {f"{m}+{v}": f"{m}+base" for m in METHODS for v in VARIANTS if v != "base"},
  }
