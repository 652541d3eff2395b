r"""`python -m tljax.models.convert`: a checkpoint converted once into tljax's `.npz`.

  python -m tljax.models.convert --model=resnet50 \
      --input=resnet50-11ad3fa6.pth --output=resnet50_imagenet.npz
  python -m tljax.models.convert --model=resnet50 --input=resnet50.pth --overview

What is read and written: `tljax/models/convert/__init__.py`.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from tljax import errors
from tljax.models import convert

_MODEL = flags.DEFINE_string("model", None, "Backbone registry name, e.g. resnet50.",
                             required=True)
_INPUT = flags.DEFINE_string("input", None, "Checkpoint to convert.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the flat .npz.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "ViTs only: resolution to build for; position embeddings "
    "are resampled to it. Default: the model's (224).")
_OVERVIEW = flags.DEFINE_bool("overview", False, "Print a parameter overview.")


@errors.exits_on_bad_input
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _OUTPUT.value and not _OVERVIEW.value:
    raise app.UsageError("give --output=FILE.npz, --overview, or both")
  if not os.path.isfile(_INPUT.value):
    raise FileNotFoundError(f"--input={_INPUT.value} is not a file: pass the checkpoint to "
                            "convert (.pth, .safetensors, .npz)")
  arrays = convert.convert(_MODEL.value, _INPUT.value, image_size=_IMAGE_SIZE.value)
  if _OVERVIEW.value:
    print(convert.parameter_overview(arrays))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "wb") as f:
      np.savez(f, **arrays)
    print(f"wrote {len(arrays)} arrays to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
