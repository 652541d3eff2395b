"""Backbones by name, and the classifier built from `config.model`.

A backbone module registers itself with `@register("name")` (`BACKBONES`, a
`tljax.registry.Registry`); its factory takes keyword arguments (`dtype`,
`frozen_norm`, plus its own) and returns a linen module mapping `(B, H, W, C)`
images to pooled `(B, D)` features.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from tljax import registry
from tljax.models.classifier import Bottleneck, Classifier  # noqa: F401

# Every module of this package is imported on the first lookup, so that each
# backbone registers itself.
BACKBONES = registry.Registry("backbone", field="config.model.name", scan=__name__)
register = BACKBONES.register


def backbone_names() -> list[str]:
  return BACKBONES.names()


def get_backbone(name: str, **kwargs) -> Any:
  factory = BACKBONES.get(name)
  try:
    return factory(**kwargs)
  except TypeError as e:
    if "keyword argument" not in str(e):
      raise
    base = {k: kwargs[k] for k in ("dtype", "frozen_norm") if k in kwargs}
    accepted = sorted({f.name for f in dataclasses.fields(factory(**base))}
                      - {"parent", "name", "dtype", "frozen_norm"})
    unknown = sorted(set(kwargs) - set(accepted) - {"dtype", "frozen_norm"})
    raise ValueError(f"backbone {name!r} does not take {', '.join(unknown)}; "
                     f"config.model.backbone_kwargs may set {', '.join(accepted)}") from e


# float64 is for exactness checks against a reference implementation (the
# trajectory parity tests); it needs `jax_enable_x64`, and `train.build` then
# keeps the parameters and statistics in float64 too.
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float64": jnp.float64}


# The fields of `config.model` that `create_classifier` passes to `Classifier`
# (configs/default.py defines each, with its default and what it means).
CLASSIFIER_FIELDS = ("bottleneck_dim", "bottleneck_norm", "bottleneck_dropout", "bottleneck_layers",
                     "bottleneck_relu", "head_type", "head_hidden", "head_dropout",
                     "bottleneck_l2_preserving_dropout", "feature_dropout", "init_scheme",
                     "output_activation")


def create_classifier(model_config: ml_collections.ConfigDict, num_classes: int,
                      frozen_norm: str = "", num_source_domains: int = 1) -> Classifier:
  """Builds the `Classifier` that `config.model` describes.

  Args:
    model_config: `config.model` (configs/default.py): `name` (backbone),
      `backbone_kwargs`, `dtype` (compute dtype; parameters stay fp32 except
      under 'float64') and `CLASSIFIER_FIELDS`.
    num_classes: classes of the task.
    frozen_norm: regex of BatchNorm module paths that keep running statistics.
    num_source_domains: labelled domains of the task (a 'multi_source' head
      has a branch for each).

  Raises:
    ValueError: a field `config.model` lacks (e.g. a workdir's config.json
      written before the field existed), or an unknown dtype or backbone.
  """
  missing = [f for f in ("name", "backbone_kwargs", "dtype", *CLASSIFIER_FIELDS)
             if f not in model_config]
  if missing:
    raise ValueError(f"config.model lacks {', '.join(missing)}: configs/default.py defines "
                     "every field; start the config from its get_config()")
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, "
                     f"got {model_config.dtype!r}")
  dtype = _DTYPES[model_config.dtype]
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("config.model.dtype='float64' needs 64-bit JAX: "
                     "jax.config.update('jax_enable_x64', True) before building")
  kwargs = dict(model_config.backbone_kwargs)
  if kwargs.get("aux_logits"):
    # An auxiliary classifier (Inception-v3's) predicts the task's classes too.
    kwargs.setdefault("num_classes", num_classes)
  backbone = get_backbone(model_config.name, dtype=dtype, frozen_norm=frozen_norm, **kwargs)
  return Classifier(backbone=backbone, num_classes=num_classes, frozen_norm=frozen_norm,
                    dtype=dtype, num_branches=num_source_domains,
                    **{field: model_config[field] for field in CLASSIFIER_FIELDS})
