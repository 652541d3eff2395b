"""Domain-adaptation and transfer methods by name (`config.method.name`).

Every module of this package is imported on first lookup, and registers its
methods (`@register`) or adaptation terms (`@terms.register_term`), so a new
method is one module here plus one config: nothing else names it. Term names
compose with '+' (`cdan+mcc`, `dann+bsp`); see `tljax.methods.terms`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import ml_collections

from tljax.methods.base import (CLASSIFIER, DomainOutputs, Method, StepContext,  # noqa: F401
                                TrainState, owned, with_owned)
from tljax.methods import terms

_METHODS: dict[str, type[Method]] = {}
_INFRASTRUCTURE = {"base", "terms"}


def register(name: str):
  """Class decorator adding a `Method` subclass under `name`."""

  def wrap(cls):
    if name in _METHODS:
      raise ValueError(f"method {name!r} is registered twice")
    _METHODS[name] = cls
    return cls

  return wrap


def _import_all() -> None:
  for module in pkgutil.iter_modules(__path__):
    if module.name not in _INFRASTRUCTURE:
      importlib.import_module(f"{__name__}.{module.name}")


def method_names() -> list[str]:
  """Every method, terms included (each term also runs alone as a method)."""
  _import_all()
  return sorted(set(_METHODS) | set(terms.term_names()))


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
  _import_all()
  method_config = dict(method_config)
  name = method_config.get("name")
  if name in _METHODS:
    cls = _METHODS[name]
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
