"""What the command-line entry points share: config overrides and one-line errors.

`tljax/main.py` reads a config file with ml_collections' `config_flags`, which
accepts `--config.<field>=<value>` only for fields the file defines (a typo is
an error that names it). The free-form keyword dicts (`OPEN_DICTS`, e.g.
`config.model.backbone_kwargs`) take any key instead, also one the file does not
list (`--config.model.backbone_kwargs.drop_path=0.1`): `split_open_overrides`
sets those flags aside before absl parses the command line, and
`apply_open_overrides` adds them to the parsed config.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from typing import Sequence

from absl import flags
import ml_collections

# Config dicts that are keyword arguments passed through as they are: any key
# may be set on the command line.
OPEN_DICTS = ("model.backbone_kwargs", "features.backbone_kwargs")

_OPEN_OVERRIDE = re.compile(r"--config\.(%s)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)"
                            % "|".join(re.escape(d) for d in OPEN_DICTS), flags=re.S)


@dataclasses.dataclass(frozen=True)
class OpenOverride:
  """`--config.<dict_path>.<key>=<text>` for a dict of `OPEN_DICTS`."""

  dict_path: str
  key: str
  text: str

  @property
  def value(self):
    """The text as a Python literal, or as the string itself when it is none."""
    try:
      return ast.literal_eval(self.text)
    except (ValueError, SyntaxError):
      return self.text


def split_open_overrides(argv: Sequence[str]) -> tuple[list[str], list[OpenOverride]]:
  """`(argv without the open-dict overrides, those overrides in order)`.

  Flag files (`--flagfile=...`) are read first, so their lines are split too.
  """
  kept, overrides = [], []
  for arg in flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False):
    match = _OPEN_OVERRIDE.fullmatch(arg)
    if match:
      overrides.append(OpenOverride(*match.groups()))
    else:
      kept.append(arg)
  return kept, overrides


def apply_open_overrides(config: ml_collections.ConfigDict,
                         overrides: Sequence[OpenOverride]) -> None:
  """Sets each override's key in its dict of `config` (a locked config included).

  Raises:
    ValueError: the config has no such dict (e.g. no `features` for a run that
      trains a whole network).
  """
  for override in overrides:
    node = config
    for part in override.dict_path.split("."):
      if part not in node:
        raise ValueError(f"--config.{override.dict_path}.{override.key}: the config has no "
                         f"{override.dict_path}")
      node = node[part]
    with node.ignore_type():
      node.unlock()
      node[override.key] = override.value


def unknown_field_message(error: Exception) -> str:
  """The one-line error for a `--config.*` override naming a field the config
  does not have (`error`: what ml_collections raised), with its suggestion."""
  message = str(error)
  key = re.search(r"'([A-Za-z0-9_]+)", message)
  suggestion = re.search(r'Did you mean "([^"]+)"', message)
  return ("error: a --config.* override names a field the config does not have"
          + (f": {key.group(1)!r}" if key else f" ({message})")
          + (f"; did you mean {suggestion.group(1)!r}?" if suggestion else ".")
          + " The config file lists every field.")


def config_import_roots(argv: Sequence[str]) -> list[str]:
  """Folders from which a config file's own imports (`from configs import
  default`) resolve, whatever the working directory: the one above the config
  file's package, and this checkout's root."""
  roots = []
  for i, arg in enumerate(argv):
    path = None
    if arg.startswith("--config="):
      path = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    if path:
      folder = os.path.dirname(os.path.abspath(path.split(":")[0]))
      while os.path.exists(os.path.join(folder, "__init__.py")):
        folder = os.path.dirname(folder)
      roots.append(folder)
  roots.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return roots


def config_load_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line for a config file that does not load: its path, and the last
  line of what went wrong (e.g. `ValueError: unknown task 'x': choose one of ...`)."""
  text = str(error)
  for cause in (error.__cause__, error.__context__):
    if cause is not None:
      text = f"{text}\n{cause}"
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  missing = next((l for l in lines if "No such file or directory" in l), None)
  if missing is not None:
    return (f"--config: the config file does not exist ({missing.split(']')[-1].strip()}, from "
            f"{os.getcwd()}); pass a config file, e.g. --config=configs/dann.py:digits")
  spec = next((a for a in argv if a.startswith("--config=")), "--config")
  reason = next((l for l in reversed(lines) if re.match(r"[A-Za-z_.]*(Error|Exception)\b", l)),
                lines[-1] if lines else type(error).__name__)
  return f"{spec}: the config does not load: {reason}"
