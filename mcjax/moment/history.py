"""History snapshots: a user's short-video and live history as of a query time q.

Short-video history: the user's short-video plays (short-video watch_end events) with ts < q,
most recent first, truncated to sv_hist_len: sv_item, sv_author, sv_category, sv_tag
(videos.parquet), sv_ts_ms (the watch_end time), sv_progress (seconds played / the video's
duration_s), sv_action (SV_ACTION_BITS of the like/follow events of that video exposure with
ts < q).

Live history: the user's past live exposures with exposure ts < q, most recent first, never the
current exposure, truncated to lv_hist_len: lv_item, lv_author, lv_category, lv_ts_ms (exposure
time), lv_watch_s (watch_end value when the watch_end is before q, else 0), lv_action
(LIVE_ACTION_BITS of the exposure's events before q).

Each domain's records become one ``HistoryStore`` (sorted per user by time, with the time each
action bit was set and the time the watch value became known). A snapshot is a *reference*
into it (``refs``: end, count, skipped position; one searchsorted per query), which the shard
writer stores as is and ``HistoryStore.materialize`` turns into the flat sequence fields:
samples never copy their histories until they are read.
"""

from __future__ import annotations

import numpy as np

from mcjax.eventlog import schema as S
from mcjax.moment.events import gather
from mcjax.moment.timeindex import SegmentedTimes, by_segment
from mcjax.contract import schema as SS
from mcjax.contract.history_store import HistoryStore


class _History:
  """Per-user records sorted by time, as a store plus the queries that point into it."""

  prefix = ""

  def __init__(self, user, ts, columns: dict, action_ts: dict, timed: dict):
    """columns / timed as ``HistoryStore`` wants them, in record order (sorted here);
    action_ts: ACTION_BITS name -> (n,) time the bit is set."""
    self.index = SegmentedTimes(user, ts)
    order = self.index.order
    self.position_of = np.empty(len(order), np.int64)
    self.position_of[order] = np.arange(len(order))
    names = SS.ACTION_BITS[self.prefix]
    stacked = np.stack([np.asarray(action_ts[name], np.int64)[order] for name in names], -1) \
        if len(order) else np.zeros((0, len(names)), np.int64)
    self.store = HistoryStore(
        self.prefix, {n: np.asarray(v)[order] for n, v in columns.items()}, stacked,
        {n: (np.asarray(v)[order], np.asarray(t, np.int64)[order]) for n, (v, t) in timed.items()})

  def refs(self, user: np.ndarray, q: np.ndarray, max_len: int,
           exclude: np.ndarray | None = None) -> dict:
    """``{p}_hist_end``, ``{p}_hist_n``, ``{p}_hist_skip`` of each (user, q): the user's most
    recent records with ts < q, at most ``max_len``, leaving out record row ``exclude``
    (-1: none)."""
    order = by_segment(user, q)  # sorted queries: the searchsorted calls sweep forward
    end, count = np.empty(len(q), np.int64), np.empty(len(q), np.int64)
    end[order] = self.index.position(user[order], q[order])
    count[order] = end[order] - self.index.segment_start(user[order])
    skip = np.full(len(end), -1, np.int64)
    if exclude is not None and len(self.index):
      pos = self.position_of[np.maximum(exclude, 0)]
      inside = (exclude >= 0) & (pos >= end - count) & (pos < end)
      skip = np.where(inside, pos, -1)
    n = np.minimum(count - (skip >= 0), max_len)
    p = self.prefix
    return {f"{p}_hist_end": end, f"{p}_hist_n": n, f"{p}_hist_skip": skip}

  def snapshot(self, refs: dict, q: np.ndarray) -> dict:
    """The materialised sequence fields and ``{p}_offsets`` of ``refs`` at query times q."""
    p = self.prefix
    seq, offsets = self.store.materialize(refs[f"{p}_hist_end"], refs[f"{p}_hist_n"],
                                          refs[f"{p}_hist_skip"], q)
    return seq | {SS.OFFSETS[p]: offsets}


class ShortVideoHistory(_History):
  """The short-video plays (watch_end records) of all users."""

  prefix = "sv"

  def __init__(self, user, ts, item, author, category, tag, progress, like_ts, follow_ts):
    super().__init__(user, ts, {"sv_item": item, "sv_author": author, "sv_category": category,
                                "sv_tag": tag, "sv_ts_ms": ts, "sv_progress": progress},
                     {"like": like_ts, "follow": follow_ts}, {})


class LiveHistory(_History):
  """The live exposures of all users; record rows are the caller's live-exposure rows."""

  prefix = "lv"

  def __init__(self, user, ts, item, author, category, watch_ts, watch_value, action_ts):
    """``action_ts``: LIVE_ACTION_BITS name -> (n,) time of the exposure's first such event."""
    super().__init__(user, ts, {"lv_item": item, "lv_author": author, "lv_category": category,
                                "lv_ts_ms": ts},
                     action_ts, {"lv_watch_s": (watch_value, watch_ts)})


def short_video_plays(user, ts, item, author, value, like_ts, follow_ts, videos) -> tuple[dict,
                                                                                     dict]:
  """Short-video plays (watch_end events of short-video exposures) -> ``ShortVideoHistory``
  keyword arguments and stats.

  sv_progress = seconds played / the video's duration_s; a play of a video missing from
  videos.parquet (``videos``, an ``events.Lookup``), or with duration_s <= 0, gets progress 0
  (counted in ``unknown_videos`` / ``sv_plays_without_duration``). The author is the video's,
  else the event's; category and tag -1 when the video is unknown.

  Args:
    user, ts, item, author, value: the play's user, time, video id, author (from the event) and
      seconds played.
    like_ts, follow_ts: the time of its exposure's first like / follow (NEVER: none).
  """
  rows = videos.rows(item)
  video = videos.columns
  duration = gather(video["duration_s"], rows, 0).astype(np.float64)
  timed = duration > 0
  progress = np.where(timed, value / np.where(timed, duration, 1.0), 0.0)
  stats = {"unknown_videos": int((rows < 0).sum()),
           "sv_plays_without_duration": int((~timed).sum())}
  return dict(user=user, ts=ts, item=item,
              author=np.where(rows >= 0, gather(video["author_id"], rows, 0), author),
              category=gather(video["category"], rows, -1), tag=gather(video["tag"], rows, -1),
              progress=progress, like_ts=like_ts, follow_ts=follow_ts), stats


def live_action_ts(first: np.ndarray) -> dict:
  """``LiveHistory`` action times of live exposures from their first-event times
  (``events.Exposures.first`` rows): each LIVE_ACTION_BITS bit is set at the exposure's first
  event of that name."""
  return {name: first[:, S.EVENT_CODE[name]] for name in SS.LIVE_ACTION_BITS}
