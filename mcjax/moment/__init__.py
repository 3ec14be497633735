"""Moment: the streaming sample engine (event-time windows, first-only masks, crowd features,
history snapshots). ``build_samples(log, MomentConfig(...))`` is the entry point."""

from mcjax.moment.config import MomentConfig
from mcjax.moment.engine import build_samples

__all__ = ["MomentConfig", "build_samples"]
