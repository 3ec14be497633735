"""History snapshots: a user's short-video and live history as of a query time q.

Short-video history: the user's play_end events with ts < q, most recent first, truncated to
sv_hist_len: sv_item, sv_author, sv_category, sv_tag (videos.parquet), sv_ts_ms (play_end
time), sv_progress (play_end value), sv_action (SV_ACTION_BITS of the like/follow events of
that video exposure with ts < q).

Live history: the user's past live exposures with exposure ts < q, most recent first, never the
current exposure, truncated to lv_hist_len: lv_item, lv_author, lv_category, lv_ts_ms (exposure
time), lv_watch_s (watch_end value when the watch_end is before q, else 0), lv_action
(LIVE_ACTION_BITS of the exposure's events before q).

Vectorised: records sorted per user (``SegmentedTimes``), one searchsorted per query for the
end of its history, then one flat gather builds the ragged arrays and their offsets.
"""

from __future__ import annotations

import numpy as np

from mcjax.moment.timeindex import SegmentedTimes
from mcjax.samples import schema as SS


class _Recent:
  """Per-user records sorted by time: the most recent ones before q, as flat rows."""

  def __init__(self, user: np.ndarray, ts: np.ndarray):
    self.index = SegmentedTimes(user, ts)
    self.position_of = np.empty(len(self.index), np.int64)
    self.position_of[self.index.order] = np.arange(len(self.index))

  def select(self, user: np.ndarray, q: np.ndarray, max_len: int,
             exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of each query's most recent records with ts < q (newest first).

    Args:
      user, q: (n,) queries.
      max_len: at most this many records per query.
      exclude: (n,) a record row to leave out of each query's history, -1 for none.

    Returns:
      rows (flat record rows), offsets (n + 1), query (the query of each flat row).
    """
    end = self.index.position(user, q)
    count = end - self.index.segment_start(user)
    if exclude is not None and len(self.index):
      pos = np.where(exclude >= 0, self.position_of[np.maximum(exclude, 0)], -1)
      skip = (exclude >= 0) & (pos >= end - count) & (pos < end)
    else:
      pos, skip = np.full(len(end), -1), np.zeros(len(end), bool)
    n = np.minimum(count - skip, max_len)
    offsets = np.zeros(len(n) + 1, np.int64)
    np.cumsum(n, out=offsets[1:])
    query = np.repeat(np.arange(len(n)), n)
    idx = end[query] - 1 - (np.arange(offsets[-1]) - offsets[query])
    idx -= skip[query] & (idx <= pos[query])
    return self.index.order[idx], offsets, query


class ShortVideoHistory:
  """The short-video (play_end) records of all users."""

  def __init__(self, user, ts, item, author, category, tag, progress, like_ts, follow_ts):
    self.recent = _Recent(user, ts)
    self.columns = _typed({"sv_item": item, "sv_author": author, "sv_category": category,
                           "sv_tag": tag, "sv_ts_ms": ts, "sv_progress": progress})
    self.actions = {bit: t for bit, t in ((SS.SV_ACTION_BITS["like"], like_ts),
                                          (SS.SV_ACTION_BITS["follow"], follow_ts))}

  def snapshot(self, user: np.ndarray, q: np.ndarray, max_len: int) -> dict:
    """sv_* sequence fields (flat) and sv_offsets of each (user, q)."""
    rows, offsets, query = self.recent.select(user, q, max_len)
    return _gather(self.columns, self.actions, rows, q[query], "sv_action") | {
        "sv_offsets": offsets}


class LiveHistory:
  """The live exposures of all users; record rows are the caller's live-exposure rows."""

  def __init__(self, user, ts, item, author, category, watch_ts, watch_value, action_ts):
    """``action_ts``: LIVE_ACTION_BITS name -> (n,) time of the exposure's first such event."""
    self.recent = _Recent(user, ts)
    self.columns = _typed({"lv_item": item, "lv_author": author, "lv_category": category,
                           "lv_ts_ms": ts})
    self.watch_ts, self.watch_value = watch_ts, watch_value
    self.actions = {SS.LIVE_ACTION_BITS[name]: t for name, t in action_ts.items()}

  def snapshot(self, user: np.ndarray, q: np.ndarray, max_len: int,
               current: np.ndarray) -> dict:
    """lv_* sequence fields (flat) and lv_offsets; ``current`` is each query's own exposure."""
    rows, offsets, query = self.recent.select(user, q, max_len, exclude=current)
    qq = q[query]
    out = _gather(self.columns, self.actions, rows, qq, "lv_action")
    watched = self.watch_ts[rows] < qq
    out["lv_watch_s"] = np.where(watched, self.watch_value[rows], 0.0).astype(np.float32)
    return out | {"lv_offsets": offsets}


def _typed(columns: dict) -> dict:
  return {name: np.asarray(v).astype(SS.FIELD[name].dtype, copy=False)
          for name, v in columns.items()}


def _gather(columns: dict, actions: dict, rows: np.ndarray, q: np.ndarray,
            action_field: str) -> dict:
  out = {name: values[rows] for name, values in columns.items()}
  bits = np.zeros(len(rows), np.int32)
  for bit, times in actions.items():
    bits |= np.where(times[rows] < q, bit, 0).astype(np.int32)
  out[action_field] = bits
  return out
