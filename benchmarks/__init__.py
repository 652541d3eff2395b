"""Benchmarks and profilers of tljax: tools that measure the library, kept out of it.

Run from the repository root, as `configs` is read: `python -m benchmarks.<command>`.
Commands (each defines its flags and is never imported):

- `train_step`: a config's jitted train step: compile time, steps/s, memory.
- `flax_vs_torch`: backbones, frozen stages, every method's digits step and the
  ResNet-50 adaptation steps fed by their input pipelines, in Flax and in PyTorch.
- `op_profile`: where a step's time goes, by kind of op, in both frameworks.
- `pipeline`: the input pipeline's images/s on JPEGs in Office-31's layout.
- `shallow`: the shallow methods against their numpy/scipy references.
- `scores`: the transferability scores and the validators on one evaluation pass.
- `seeds`: K seeds in one process (`config.num_seeds`) against K separate runs.

What they import: `cases` (the rows of the Flax-vs-PyTorch table),
`flax_steps` and `torch_steps` (each framework's side of every timed step),
`torch_reference` (TLlib's examples restated in PyTorch, also the parity
tests' reference), `profiling`, `shallow_timing`, `office31_like` and `timing`.
tljax never imports this package (`.importlinter`).
"""
