"""How every command prints bad input: `error: <message>`, one line.

The library raises `ValueError` or `OSError` with a message that names the
problem and its fix; each `python -m tljax.<command>` turns such an error into
this line and exit status 1, with no traceback.
"""

from __future__ import annotations


def one_line_error(error: Exception) -> str:
  """`error: <message>` on one line, except listings (files searched, parameters
  that do not fit), which are clearer as the lists they are."""
  message = str(error)
  if "\n  " not in message:
    message = " ".join(message.split())
  return f"error: {message}"
