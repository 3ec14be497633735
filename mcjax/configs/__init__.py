"""The named configs: one module per config, each with ``get_config()``.

A named config starts from ``mcjax.config.default_config()`` and changes a few fields; its
docstring gives the command, hardware, wall time and expected metric. They ship inside the
package, so an installed mcjax loads them by name (``mcjax.config.load_config("smoke")``) and
launchers take their files (``--config=mcjax/configs/smoke.py`` in a checkout, or
``path("smoke")`` anywhere). This module imports nothing heavy: launchers use ``path`` for a
flag default before they import JAX.
"""

from __future__ import annotations

import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The known config names (the modules of this package), sorted."""
  return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and f != "__init__.py")


def path(name: str) -> str:
  """The file of config ``name``; ValueError listing the known names."""
  if name not in names():
    raise ValueError(f"no config named {name!r}; known: {names()}")
  return os.path.join(DIR, f"{name}.py")
