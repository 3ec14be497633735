"""Scoring with a trained run: ``Scorer`` (restore, features from an event log or an
``EventBuffer``, per-task probabilities and Ranking_Score), and ``export`` (a StableHLO
scorer that a process with only jax and numpy can load)."""

from mcjax.serve.requests import EventBuffer, RequestBuilder
from mcjax.serve.scorer import BUCKETS, Ranking, Scorer

__all__ = ["BUCKETS", "EventBuffer", "Ranking", "RequestBuilder", "Scorer"]
