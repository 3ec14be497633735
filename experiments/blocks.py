"""Named blocks another program owns inside a generated markdown report.

A report regenerated whole (``experiments.ablation --out``) would drop what a second program
wrote into it; a block keeps it: the text between ``<!-- block NAME: begin -->`` and
``<!-- block NAME: end -->`` belongs to the program that wrote NAME. ``put`` replaces (or
appends) one block of a file; ``carry`` returns the blocks of an old text, for the report's
writer to append to the new one.
"""

from __future__ import annotations

import os
import re

from mcjax.eventlog.files import atomic_write

_BLOCK = re.compile(r"<!-- block (?P<name>[\w.-]+): begin -->\n.*?<!-- block (?P=name): end -->\n?",
                    re.S)


def wrap(name: str, body: str) -> str:
  return f"<!-- block {name}: begin -->\n{body.rstrip()}\n<!-- block {name}: end -->\n"


def carry(old_text: str) -> str:
  """Every block of ``old_text``, in order, as one string ('' when none)."""
  return "".join(m.group(0) if m.group(0).endswith("\n") else m.group(0) + "\n"
                 for m in _BLOCK.finditer(old_text))


def carry_from(path: str) -> str:
  """``carry`` of the file at ``path`` ('' when there is none)."""
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return carry(f.read())


def put(path: str, name: str, body: str) -> None:
  """Writes block ``name`` with ``body`` into ``path`` (replacing its earlier text, else
  appended at the end), atomically; the rest of the file is unchanged."""
  with open(path) as f:
    text = f.read()
  new = wrap(name, body)
  spans = [m.span() for m in _BLOCK.finditer(text) if m.group("name") == name]
  if spans:
    a, b = spans[0]
    text = text[:a] + new + text[b:]
  else:
    text = text.rstrip("\n") + "\n\n" + new
  atomic_write(path, text)
