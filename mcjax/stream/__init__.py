"""Moment as a stream: event sources, the incremental engine, and what runs behind it.

``source.Source`` is the one protocol every event source implements (a replay of a log, a
Redis stream); the engine consumes its ``Batch``es and checkpoints its ``position()``.
"""
