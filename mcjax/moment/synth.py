"""Synthetic event logs for the engine's tests and benchmarks (not the simulated world).

``tables_from_events`` turns a few hand-written event rows into a complete ``LogTables`` (side
tables derived from the ids); ``random_log`` draws a log of any size, vectorised, with live
exposures (clicks, watches, likes, comments, gifts, follows) and short-video plays.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mcjax.eventlog import schema as S
from mcjax.moment.events import LogTables

EPOCH_MS = 1_746_057_600_000  # 2025-05-01 00:00:00 UTC
VIDEO_DURATION_S = 30.0       # duration_s of every video of tables_from_events
_COLUMNS = ("ts_ms", "user_id", "exposure_id", "domain", "item_id", "author_id", "event",
            "value")


def tables_from_events(events, oracle: pa.Table | None = None) -> LogTables:
  """Event rows -> LogTables with side tables covering every id.

  Args:
    events: a list of (ts_ms, user_id, exposure_id, domain, item_id, author_id, event, value)
      tuples, or a dict of equal-length column arrays with those names.
    oracle: optional ``_oracle/exposures.parquet`` table.

  Users get age = id % 5, gender = id % 2, activity = id % 3; authors category = id % 4 and
  fans = id % 6; lives category = id % 7, start at their first event; videos category = id % 8,
  tag = id % 11 and duration_s = VIDEO_DURATION_S.
  """
  if not isinstance(events, dict):
    events = dict(zip(_COLUMNS, zip(*events))) if events else {c: [] for c in _COLUMNS}
  table = pa.table({c: pa.array(events[c], S.EVENT_SCHEMA.field(c).type) for c in _COLUMNS})
  ts = table["ts_ms"].to_numpy()
  domain = table["domain"].to_numpy()
  item, author = table["item_id"].to_numpy(), table["author_id"].to_numpy()
  users = np.unique(table["user_id"].to_numpy())
  authors = np.unique(author)
  is_live = domain == S.LIVE
  order = np.argsort(ts[is_live], kind="stable")
  lives, first = np.unique(item[is_live][order], return_index=True)
  live_author = author[is_live][order][first]
  start = ts[is_live][order][first]
  videos, vfirst = np.unique(item[~is_live], return_index=True)
  i32 = lambda a: pa.array(np.asarray(a, np.int64) % 2**31, pa.int32())  # noqa: E731
  return LogTables(
      events=table,
      users=pa.table({"user_id": users, "age_bucket": i32(users % 5),
                      "gender": i32(users % 2), "activity_bucket": i32(users % 3)}),
      authors=pa.table({"author_id": authors, "category": i32(authors % 4),
                        "fans_bucket": i32(authors % 6),
                        "is_live_author": np.isin(authors, live_author),
                        "is_video_author": np.isin(authors, author[~is_live])}),
      lives=pa.table({"live_id": lives, "author_id": live_author, "category": i32(lives % 7),
                      "start_ms": start, "end_ms": start + 6 * 3_600_000}),
      videos=pa.table({"video_id": videos, "author_id": author[~is_live][vfirst],
                       "category": i32(videos % 8), "tag": i32(videos % 11),
                       "duration_s": pa.array(np.full(len(videos), VIDEO_DURATION_S),
                                              pa.float32())}),
      oracle_exposures=oracle)


def random_log(live_exposures: int, users: int = 200, lives: int = 20, hours: float = 2.0,
               sv_ratio: float = 3.0, seed: int = 0) -> LogTables:
  """A random log with ``live_exposures`` live exposures (and sv_ratio x short-video plays)."""
  rng = np.random.default_rng(seed)
  span = int(hours * 3_600_000)
  live_author = rng.integers(1, 10 * lives, lives)
  n = live_exposures
  live = rng.integers(0, lives, n)
  cols = {c: [] for c in _COLUMNS}

  def add(ts, user, xid, domain, item, author, event, value):
    m = len(ts)
    for c, v in zip(_COLUMNS, (ts, user, xid, [domain] * m, item, author, [event] * m, value)):
      cols[c].append(np.asarray(v))

  e_ts = EPOCH_MS + rng.integers(0, span, n)
  user = rng.integers(0, users, n)
  xid = np.arange(n, dtype=np.int64) * 2
  item, author = 1000 + live, live_author[live]
  zero = np.zeros(n)
  add(e_ts, user, xid, S.LIVE, item, author, S.EXPOSURE, zero)
  c = rng.random(n) < 0.3
  c_ts = e_ts[c] + (rng.exponential(3.0, c.sum()) * 1000).astype(np.int64)
  add(c_ts, user[c], xid[c], S.LIVE, item[c], author[c], S.CLICK, zero[c])
  watch = np.exp(rng.normal(np.log(60.0), 1.0, c.sum()))
  w_ts = c_ts + (watch * 1000).astype(np.int64)
  add(w_ts, user[c], xid[c], S.LIVE, item[c], author[c], S.WATCH_END, watch)
  for event, per_min in ((S.LIKE, 2.0), (S.COMMENT, 0.5), (S.GIFT, 0.1), (S.FOLLOW, 0.05)):
    k = rng.poisson(per_min * watch / 60.0)
    r = np.repeat(np.flatnonzero(c), k)
    t = np.repeat(c_ts, k) + (rng.random(k.sum()) * np.repeat(watch, k) * 1000).astype(np.int64)
    value = rng.pareto(1.3, k.sum()) + 1.0 if event == S.GIFT else np.zeros(k.sum())
    add(t, user[r], xid[r], S.LIVE, item[r], author[r], event, value)
  m = int(n * sv_ratio)
  s_ts = EPOCH_MS + rng.integers(0, span, m)
  s_user = rng.integers(0, users, m)
  s_xid = np.arange(m, dtype=np.int64) * 2 + 1
  video = rng.integers(0, 50 * lives, m)
  s_author = 10_000 + video // 5
  progress = rng.random(m) * 1.5
  zero = np.zeros(m)
  add(s_ts, s_user, s_xid, S.SHORT_VIDEO, 100_000 + video, s_author, S.EXPOSURE, zero)
  p_ts = s_ts + (progress * (VIDEO_DURATION_S * 1000)).astype(np.int64) + 1
  add(p_ts, s_user, s_xid, S.SHORT_VIDEO, 100_000 + video, s_author, S.WATCH_END,
      progress * VIDEO_DURATION_S)
  for event, p in ((S.LIKE, 0.1), (S.FOLLOW, 0.02)):
    r = rng.random(m) < p
    add(s_ts[r] + 500, s_user[r], s_xid[r], S.SHORT_VIDEO, 100_000 + video[r], s_author[r],
        event, zero[r])
  merged = {c: np.concatenate(v) for c, v in cols.items()}
  order = np.lexsort((merged["exposure_id"], merged["ts_ms"]))
  return tables_from_events({c: v[order] for c, v in merged.items()})
