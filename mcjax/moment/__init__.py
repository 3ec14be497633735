"""Moment: the streaming sample engine (event-time windows, first-only masks, crowd features,
history snapshots). ``mcjax.moment.engine.build_samples(log, MomentConfig(...))`` is the entry
point; the Beam pipeline (``mcjax.samples.beam``) runs the same engine functions per key.

This package's ``__init__`` imports only the config, so every run config (``mcjax.config``)
loads on a machine without the data stack (pyarrow), e.g. a GPU box that only trains.
"""

from mcjax.moment.config import MomentConfig

__all__ = ["MomentConfig"]
