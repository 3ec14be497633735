"""Event times grouped by segment (a live, a user), sorted for vectorised range queries.

Each (segment, time) pair becomes one int64 key ``segment_rank * span + (time - t_lo + 1)``, so
a single sorted key array and ``np.searchsorted`` answer "how many events of segment s are
before time t" for any number of queries at once, with no loop over segments.
"""

from __future__ import annotations

import numpy as np

_KEY_LIMIT = 2 ** 62


class SegmentedTimes:
  """Times grouped by an int64 segment id, sorted by (segment, time)."""

  def __init__(self, segment: np.ndarray, ts: np.ndarray):
    segment = np.asarray(segment, np.int64)
    ts = np.asarray(ts, np.int64)
    self.segments = np.unique(segment)
    self.t_lo = int(ts.min()) if len(ts) else 0
    self.t_hi = int(ts.max()) if len(ts) else 0
    self.span = self.t_hi - self.t_lo + 3
    if len(self.segments) * self.span >= _KEY_LIMIT:
      raise ValueError(f"time range {self.span} ms x {len(self.segments)} segments overflows "
                       "the int64 keys; split the log into shorter periods")
    keys = self._keys(np.searchsorted(self.segments, segment), ts)
    self.order = np.argsort(keys, kind="stable")  # row of the original arrays, by key
    self.keys = keys[self.order]

  def __len__(self) -> int:
    return len(self.keys)

  def _keys(self, rank: np.ndarray, ts: np.ndarray) -> np.ndarray:
    offset = np.clip(ts, self.t_lo - 1, self.t_hi + 1) - (self.t_lo - 1)
    return rank * self.span + offset

  def position(self, segment: np.ndarray, ts: np.ndarray, side: str = "left") -> np.ndarray:
    """Position in the sorted keys of (segment, ts); 0 for segments without events.

    ``side="left"`` counts the segment's events before ``ts`` (plus all earlier segments),
    ``"right"`` those at or before it.
    """
    segment, ts = np.broadcast_arrays(np.asarray(segment, np.int64), np.asarray(ts, np.int64))
    if not len(self.segments):
      return np.zeros(segment.shape, np.int64)
    rank = np.minimum(np.searchsorted(self.segments, segment), len(self.segments) - 1)
    found = self.segments[rank] == segment
    pos = _searchsorted(self.keys, self._keys(rank, ts), side)
    return np.where(found, pos, 0)

  def segment_start(self, segment: np.ndarray) -> np.ndarray:
    """Position of the first event of each segment (its events before any time)."""
    return self.position(segment, np.full(np.shape(segment), self.t_lo - 1, np.int64))

  def count(self, segment: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            lo_open: bool = True) -> np.ndarray:
    """Events of ``segment`` with lo < t < hi (lo <= t < hi when ``lo_open`` is False)."""
    return self.position(segment, hi, "left") - self.position(
        segment, lo, "right" if lo_open else "left")


def _searchsorted(sorted_keys: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
  """np.searchsorted for many queries: sorted queries turn random probes of a large array into
  a forward sweep (4x faster for 64k queries into 3M keys), so unsorted ones are sorted first.
  Callers with many calls sort their queries by (segment, time) once (``by_segment``)."""
  flat = queries.reshape(-1)
  if flat.size < 1024 or np.all(flat[1:] >= flat[:-1]):
    return np.searchsorted(sorted_keys, queries, side=side)
  order = np.argsort(flat)
  out = np.empty(flat.shape, np.int64)
  out[order] = np.searchsorted(sorted_keys, flat[order], side=side)
  return out.reshape(queries.shape)


def by_segment(segment: np.ndarray, ts: np.ndarray) -> np.ndarray:
  """The order that sorts queries by (segment, time): in it, the keys of every
  ``SegmentedTimes`` (and of ts shifted by a constant) are non-decreasing."""
  return np.lexsort((ts, segment))
