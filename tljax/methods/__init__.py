"""Domain-adaptation methods by name (`config.method.name`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from tljax.methods.base import DomainOutputs, Method, SourceOnly  # noqa: F401

_METHODS: dict[str, type[Method]] = {"source_only": SourceOnly}


def register(name: str):
  def wrap(cls):
    _METHODS[name] = cls
    return cls
  return wrap


def _import_all() -> None:
  # Imported here (not at the top) because they register themselves with `register`.
  from tljax.methods import adversarial, discrepancy, regularizers  # noqa: F401  pylint: disable=g-import-not-at-top


def method_names() -> list[str]:
  _import_all()
  return sorted(_METHODS)


def _to_field_value(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _to_field_value(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_to_field_value(v) for v in value)
  return value


def create_method(method_config: ml_collections.ConfigDict, *, num_classes: int,
                  total_steps: int) -> Method:
  """Builds the method module from `config.method` (`name` + its fields)."""
  name = method_config.name
  _import_all()
  if name not in _METHODS:
    raise ValueError(f"unknown config.method.name {name!r}; choose one of {', '.join(method_names())}")
  cls = _METHODS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  kwargs = {k: _to_field_value(v) for k, v in method_config.items() if k != "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"config.method has fields {unknown} that method {name!r} does not "
                     f"take; it takes {sorted(fields)}")
  if "num_classes" in fields:
    kwargs.setdefault("num_classes", num_classes)
  if "total_steps" in fields:
    kwargs.setdefault("total_steps", total_steps)
  return cls(**kwargs)
