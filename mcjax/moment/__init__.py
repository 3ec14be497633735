"""Moment: the streaming sample engine (event-time windows, first-only masks, crowd features,
history snapshots). ``build_samples(log, MomentConfig(...))`` is the entry point.

The engine (numpy + pyarrow) is imported on first use, so ``mcjax.moment.config`` (needed by
every config) loads on a machine that only trains, e.g. a GPU box without pyarrow.
"""

from mcjax.moment.config import MomentConfig

__all__ = ["MomentConfig", "build_samples"]


def __getattr__(name):
  if name == "build_samples":
    from mcjax.moment.engine import build_samples
    return build_samples
  if name == "engine":
    import importlib
    return importlib.import_module("mcjax.moment.engine")
  raise AttributeError(f"module 'mcjax.moment' has no attribute {name!r}")
