r"""Where a backbone train step spends its time, by kind of op: Flax and PyTorch.

  taskset -c 0 python -m benchmarks.op_profile --model=resnet50 --size=112 --batch=16
  taskset -c 0 python -m benchmarks.op_profile --digits=dann --batch=64 --top=5

Flax: one step of `benchmarks.flax_steps`' train step runs under
`jax.profiler`, and each XLA:CPU thunk is put in a category of op through the
compiled HLO (`benchmarks.profiling`). PyTorch: `torch.profiler` self CPU time
per aten op, grouped the same way (`benchmarks.torch_steps.profile_torch`).

Times are summed wall times of the thunks (ops): with two threads two ops may
overlap, and on a loaded machine an op's wall time includes time the thread
was descheduled. Pinning to one core (`taskset -c 0`) makes the shares the
shares of the work. Only the shares are comparable across frameworks.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

from absl import app
from absl import flags

if importlib.util.find_spec("torch") is not None:
  # Before `profiling`, which loads TensorFlow (through tljax's trainer): PyTorch's
  # libraries crash the process when they are loaded after it.
  from benchmarks import torch_steps
else:  # PyTorch is optional: without it the profile is Flax's only.
  torch_steps = None
from benchmarks import profiling  # noqa: E402  (after torch_steps: see above)

_MODEL = flags.DEFINE_string("model", "resnet50", "Backbone registry name.")
_SIZE = flags.DEFINE_integer("size", 112, "Square image size.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per step.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Flax compute dtype.")
_TORCH = flags.DEFINE_bool("torch", True, "Also profile the PyTorch step.")
_TOP = flags.DEFINE_integer("top", 0, "Also list the N slowest ops of each Flax category.")
_DIGITS = flags.DEFINE_string(
    "digits", None, "Profile this method's digits train step (configs/<method>.py:digits, "
    "--batch source + --batch target 28-px images) instead of a backbone.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Profile this many steps and keep each op's smallest time (on a loaded "
    "machine, an op's time otherwise includes time its thread was descheduled).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with_torch = _TORCH.value and torch_steps is not None
  if _TORCH.value and torch_steps is None:
    print("PyTorch is not installed: profiling Flax only.")
  repeats, batch = _REPEATS.value, _BATCH.value
  if _DIGITS.value:
    method = _DIGITS.value
    torch_result = (torch_steps.profile_torch_digits(method, batch, repeats)
                    if with_torch and torch_steps.digits_supported(method) else None)
    print(f"## digits {method}, {batch} source + {batch} target images, {_DTYPE.value}\n")
    flax_result = profiling.profile_flax_digits(method, batch, _DTYPE.value, _TOP.value,
                                                repeats)
  else:
    torch_result = (torch_steps.profile_torch(_MODEL.value, _SIZE.value, batch, repeats)
                    if with_torch else None)
    print(f"## {_MODEL.value} {_SIZE.value}px batch {batch} {_DTYPE.value}\n")
    flax_result = profiling.profile_flax(_MODEL.value, _SIZE.value, batch, _DTYPE.value,
                                         _TOP.value, repeats)
  print(profiling.format_profile(flax_result, "flax"))
  if torch_result is not None:
    print()
    print(profiling.format_profile(torch_result, "torch"))


if __name__ == "__main__":
  app.run(main)
