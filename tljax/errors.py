"""How every command prints bad input: `error: <message>`, one line.

The library raises `ValueError` or `OSError` with a message that names the
problem and its fix; each `python -m tljax.<command>` turns such an error into
this line and exit status 1, with no traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Sequence


def one_line_error(error: Exception) -> str:
  """`error: <message>` on one line, except listings (files searched, parameters
  that do not fit), which are clearer as the lists they are."""
  message = str(error)
  if "\n  " not in message:
    message = " ".join(message.split())
  return f"error: {message}"


def exits_on_bad_input(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
  """A command's absl `main`, with `ValueError` and `OSError` (bad input: a
  missing file, a grid or config that does not do) printed as
  `one_line_error` and exit status 1 instead of a traceback."""

  @functools.wraps(main)
  def wrapped(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except (ValueError, OSError) as e:
      sys.exit(one_line_error(e))

  return wrapped
