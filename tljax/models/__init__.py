"""Backbones by name, and the classifier built from `config.model`.

A backbone module registers itself with `@register("name")`; its factory takes
keyword arguments (`dtype`, `frozen_norm`, plus its own) and returns a linen
module mapping `(B, H, W, C)` images to pooled `(B, D)` features.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from tljax.models.classifier import Bottleneck, Classifier  # noqa: F401

_BACKBONES: dict[str, Callable[..., Any]] = {}
# Modules imported on first lookup, so that each backbone registers itself.
_BACKBONE_MODULES = (
    "tljax.models.small_cnn",
    "tljax.models.identity",
    "tljax.models.resnet",
    "tljax.models.vit",
    "tljax.models.vgg",
    "tljax.models.inception",
)


def register(name: str):
  """Class or function decorator adding a backbone factory under `name`."""

  def wrap(factory):
    if name in _BACKBONES:
      raise ValueError(f"backbone {name!r} is registered twice")
    _BACKBONES[name] = factory
    return factory

  return wrap


def _import_all() -> None:
  for module in _BACKBONE_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:  # a real import error inside the module
        raise


def backbone_names() -> list[str]:
  _import_all()
  return sorted(_BACKBONES)


def get_backbone(name: str, **kwargs) -> Any:
  _import_all()
  if name not in _BACKBONES:
    raise ValueError(
        f"unknown backbone {name!r}; config.model.name must be one of "
        f"{', '.join(backbone_names())}")
  factory = _BACKBONES[name]
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


def create_classifier(model_config: ml_collections.ConfigDict, num_classes: int,
                      frozen_norm: str = "", num_source_domains: int = 1) -> Classifier:
  """Builds the `Classifier` that `config.model` describes.

  Args:
    model_config: `name` (backbone), `bottleneck_dim`, `bottleneck_norm`,
      `bottleneck_dropout`, `bottleneck_layers`, `bottleneck_relu`, `head_type`,
      `head_hidden`, `head_dropout`, `output_activation` (regression: 'sigmoid'), `dtype` (compute
      dtype; parameters stay fp32 except under 'float64'), and `backbone_kwargs`.
    num_classes: classes of the task.
    frozen_norm: regex of BatchNorm module paths that keep running statistics.
    num_source_domains: labelled domains of the task (a 'multi_source' head
      has a branch for each).
  """
  if model_config.get("dtype", "float32") not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, "
                     f"got {model_config.dtype!r}")
  dtype = _DTYPES[model_config.get("dtype", "float32")]
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("config.model.dtype='float64' needs 64-bit JAX: "
                     "jax.config.update('jax_enable_x64', True) before building")
  kwargs = dict(model_config.get("backbone_kwargs", {}) or {})
  if kwargs.get("aux_logits"):
    # An auxiliary classifier (Inception-v3's) predicts the task's classes too.
    kwargs.setdefault("num_classes", num_classes)
  backbone = get_backbone(model_config.name, dtype=dtype, frozen_norm=frozen_norm, **kwargs)
  return Classifier(
      backbone=backbone,
      num_classes=num_classes,
      bottleneck_dim=model_config.get("bottleneck_dim", 0),
      bottleneck_norm=model_config.get("bottleneck_norm", True),
      bottleneck_dropout=model_config.get("bottleneck_dropout", 0.0),
      head_type=model_config.get("head_type", ""),
      head_hidden=model_config.get("head_hidden", 0),
      head_dropout=model_config.get("head_dropout", 0.5),
      bottleneck_l2_preserving_dropout=model_config.get("bottleneck_l2_preserving_dropout", False),
      init_scheme=model_config.get("init_scheme", "torch"),
      output_activation=model_config.get("output_activation", ""),
      frozen_norm=frozen_norm,
      dtype=dtype,
      bottleneck_layers=model_config.get("bottleneck_layers", 1),
      bottleneck_relu=model_config.get("bottleneck_relu", True),
      feature_dropout=model_config.get("feature_dropout", 0.0),
      num_branches=num_source_domains,
  )
