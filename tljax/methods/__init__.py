"""Domain-adaptation and transfer methods by name (`config.method.name`).

Every module of this package is imported on first lookup, and registers its
methods (`@register`, into `METHODS`) or adaptation terms
(`@terms.register_term`, into `terms.TERMS`), so a new
method is one module here plus one config: nothing else names it. Term names
compose with '+' (`cdan+mcc`, `dann+bsp`); see `tljax.methods.terms`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from tljax import registry
from tljax.methods.base import (CLASSIFIER, DomainOutputs, Method, StepContext,  # noqa: F401
                                TrainState, owned, with_owned)
from tljax.methods import terms

# Every module of this package is imported on the first lookup, and registers
# its methods or terms.
METHODS = registry.Registry("method", field="config.method.name", scan=__name__)
register = METHODS.register


def method_names() -> list[str]:
  """Every method, terms included (each term also runs alone as a method)."""
  return sorted(set(METHODS.names()) | set(terms.term_names()))


def _to_field_value(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _to_field_value(v) for k, v in value.items()}
  if isinstance(value, dict):
    return {k: _to_field_value(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_to_field_value(v) for v in value)
  return value


def _field_names(cls: type) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def create_method(method_config: ml_collections.ConfigDict | dict, *, num_classes: int) -> Method:
  """Builds the method `config.method` names, with its fields.

  Raises:
    ValueError: for an unknown name, or a field the method does not take.
  """
  method_config = dict(method_config)
  name = method_config.get("name")  # a config without one gets the error below
  if name in METHODS:
    cls = METHODS.get(name)
    fields = _field_names(cls)
    kwargs = {k: _to_field_value(v) for k, v in method_config.items() if k != "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
      raise ValueError(f"config.method has fields {unknown} that method {name!r} does not "
                       f"take; it takes {sorted(fields)}")
    if "num_classes" in fields:
      kwargs.setdefault("num_classes", num_classes)
    return cls(**kwargs)
  if isinstance(name, str) and ("+" in name or name in terms.term_names()):
    return terms.create_terms_method(name, method_config, num_classes=num_classes,
                                     field_names=_field_names, convert=_to_field_value)
  raise ValueError(f"unknown config.method.name {name!r}; choose one of "
                   f"{', '.join(method_names())}, or terms joined by '+' "
                   f"({', '.join(terms.term_names())})")
