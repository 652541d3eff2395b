"""Things chosen by name in a config: one registry helper for all of them.

Methods (`config.method.name`), adaptation terms, backbones
(`config.model.name`) and datasets (`config.source` / `config.target`) each
keep a `Registry`; a module adds its entries with `@REGISTRY.register(name)`,
so a new method, backbone or dataset is one module and nothing else names it.
A registry made with `scan=` imports every module of that package the first
time it is read, so that each registers itself (the registering modules import
the registry, never the reverse). It sits in the foundations layer: it imports
nothing of tljax.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable


class Registry:
  """Names -> objects (classes or factories) of one kind.

  Args:
    kind: what the entries are, for errors ('method', 'backbone', ...).
    field: the config field that names one, for errors ('config.model.name').
    scan: a package whose modules (but `_private` ones) are all imported
      before the first read.
  """

  def __init__(self, kind: str, *, field: str = "", scan: str | None = None):
    self.kind, self.field, self.scan = kind, field, scan
    self._entries: dict[str, Any] = {}
    self._scanned = scan is None

  def register(self, name: str) -> Callable[[Any], Any]:
    """Decorator adding the class or function under `name`."""

    def wrap(entry):
      if name in self._entries and self._entries[name] is not entry:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = entry
      return entry

    return wrap

  def _import_all(self) -> None:
    if self._scanned:
      return
    self._scanned = True  # before importing: a module may read the registry as it loads
    try:
      package = importlib.import_module(self.scan)
      for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
          importlib.import_module(f"{self.scan}.{module.name}")
    except BaseException:
      self._scanned = False  # the next read tries again, and fails the same way
      raise

  def names(self) -> list[str]:
    self._import_all()
    return sorted(self._entries)

  def __contains__(self, name: object) -> bool:
    self._import_all()
    return name in self._entries

  def get(self, name: str) -> Any:
    """The entry under `name`.

    Raises:
      ValueError: one line naming the known entries.
    """
    self._import_all()
    if name not in self._entries:
      where = f"; {self.field} must be one of" if self.field else ": choose one of"
      raise ValueError(f"unknown {self.kind} {name!r}{where} {', '.join(self.names())}")
    return self._entries[name]
