r"""Converts a pretrained checkpoint once into tljax's flat `.npz`.

Reads anything `tljax.models.checkpoints` reads (torchvision / timm state dicts
as `.safetensors` or `.pth`, big_vision / AugReg `.npz`), translates and checks
it against the named backbone, and writes the variables with their '/'-joined
tljax paths (`params/backbone/...`, `batch_stats/backbone/...` and, when the
checkpoint has a classification layer, `params/head/...`). The result loads
with `checkpoints.load` like the original, without torch and without
re-translating:

  python -m tljax.models.convert --model=resnet50 \
      --input=resnet50-11ad3fa6.pth --output=resnet50_imagenet.npz
  python -m tljax.models.convert --model=vit_base_patch16 --image_size=384 \
      --input=B_16-i21k.npz --output=vit_b16_384.npz
  python -m tljax.models.convert --model=resnet50 --input=resnet50.pth --overview

The command line is `tljax/models/convert/__main__.py`.
"""

from __future__ import annotations

from typing import Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from tljax import models
from tljax.models import checkpoints


def convert(model: str, path: str, *, image_size: int | None = None) -> dict[str, np.ndarray]:
  """Reads `path` and returns its variables as tljax's flat `{path: array}`.

  Args:
    model: backbone registry name.
    path: checkpoint file.
    image_size: for ViTs, the resolution to resample position embeddings to.

  Returns:
    '/'-joined paths with collection -> fp32 arrays, checked against the model's
    shapes (every backbone variable present, nothing unexpected).
  """
  checkpoint = checkpoints.read(path, backbone=model)
  backbone_kwargs = {"image_size": image_size} if image_size else {}
  aux_bias = checkpoint.arrays.get("params/backbone/AuxLogits/fc/bias")
  if aux_bias is not None:
    # Inception-v3's auxiliary classifier: build the model with it, so that
    # its weights are checked and kept like the rest.
    backbone_kwargs.update(aux_logits=True, num_classes=aux_bias.shape[-1])
  backbone = models.get_backbone(model, **backbone_kwargs)
  num_classes = 1
  if checkpoint.has_head:
    num_classes = checkpoint.arrays["params/head/bias"].shape[-1]
  classifier = models.Classifier(backbone, num_classes=num_classes)
  size = getattr(backbone, "image_size", None) or 224
  # Shapes only: building VGG-16's 138M random parameters would be wasted work.
  shapes = jax.eval_shape(classifier.init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  target = flax.traverse_util.flatten_dict(dict(shapes), sep="/")
  return checkpoints.match(target, checkpoint, load_head=checkpoint.has_head,
                           source=path)


def parameter_overview(arrays: Mapping[str, np.ndarray]) -> str:
  """A table of path, shape, dtype and element count, with the total."""
  rows = [(key, str(tuple(value.shape)), str(value.dtype), int(np.prod(value.shape)))
          for key, value in sorted(arrays.items())]
  path_width = max([len("path")] + [len(row[0]) for row in rows])
  shape_width = max([len("shape")] + [len(row[1]) for row in rows])
  lines = [f"{'path':<{path_width}}  {'shape':<{shape_width}}  {'dtype':<8}  {'count':>12}"]
  lines.append("-" * len(lines[0]))
  for key, shape, dtype, count in rows:
    lines.append(f"{key:<{path_width}}  {shape:<{shape_width}}  {dtype:<8}  {count:>12,}")
  lines.append("-" * len(lines[0]))
  total = sum(row[3] for row in rows)
  params = sum(row[3] for row in rows if row[0].startswith("params/"))
  lines.append(f"total: {total:,} values in {len(rows)} arrays "
               f"({params:,} parameters, {total - params:,} statistics)")
  return "\n".join(lines)
