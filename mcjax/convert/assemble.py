"""Shared machinery of the converters: exposures and events -> a sorted event table, watch-span
matching, side-table completion, conversion statistics, and validate-then-write.

Exposure ids are deterministic: exposures are numbered in order of (ts_ms, user_id, domain,
item_id, source, source row). Events are sorted by (ts_ms, exposure_id, event rank), the rank
putting an exposure before its click and the end of a watch or play after what happened at
the same instant.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.convert import sources as src_
from mcjax.convert import times as times_lib
from mcjax.eventlog import files
from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.eventlog import validate as V

RANK = {S.EXPOSURE: 0, S.CLICK: 1, S.LIKE: 2, S.COMMENT: 3, S.GIFT: 4, S.FOLLOW: 5,
        S.WATCH_END: 6}


@dataclasses.dataclass
class ConvertStats:
  """What a conversion read, wrote and dropped."""
  rows_read: dict[str, int] = dataclasses.field(default_factory=dict)
  events: dict[str, int] = dataclasses.field(default_factory=dict)
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  notes: dict[str, int] = dataclasses.field(default_factory=dict)
  time_units: dict[str, str] = dataclasses.field(default_factory=dict)  # "file:column" -> how

  def drop(self, reason: str, mask: np.ndarray) -> np.ndarray:
    """Counts the rows of ``mask`` under ``reason``; returns the rows to keep (~mask)."""
    self.dropped[reason] = self.dropped.get(reason, 0) + int(np.count_nonzero(mask))
    return ~mask

  def summary(self) -> str:
    part = lambda d: ", ".join(f"{k}={v}" for k, v in d.items()) or "none"
    return "\n".join([f"rows read: {part(self.rows_read)}",
                      f"time columns read as: {part(self.time_units)}",
                      f"events written: {part(self.events)}",
                      f"dropped rows: {part(self.dropped)}",
                      f"notes: {part(self.notes)}"])


def read_keyed(src: str, name: str, columns: list[str], stats: ConvertStats, *,
               ids=(), times=(), optional_times=(), tz: str | None = None
               ) -> tuple[pa.Table, dict[str, np.ndarray]]:
  """Reads a source file and parses its id and time columns (row numbers as in the file).

  Rows with a null id or a null time of ``times`` are dropped and counted per column (a
  null in ``optional_times`` is kept as MISSING); how each time column was read (its epoch
  unit, ISO with zone, ...) goes into ``stats.time_units``. Returns the kept rows of the
  table and the parsed columns (int64).
  """
  t = src_.read_source(src, name, columns, text=(*ids, *times, *optional_times))
  stats.rows_read[name] = t.num_rows
  cols = {c: src_.ids(t.column(c), src_.where(t, c)) for c in ids}
  for c in (*times, *optional_times):
    cols[c], how = times_lib.parse_times(t.column(c), src_.where(t, c), tz)
    stats.time_units[f"{name}:{c}"] = how
  keep = np.ones(t.num_rows, bool)
  for c in (*ids, *times):
    keep &= stats.drop(f"{name}: null {c}", (cols[c] < 0) & keep)
  keep &= stats.drop(f"{name}: duplicate row", _repeated_rows(t) & keep)
  return t.filter(pa.array(keep)), {c: v[keep] for c, v in cols.items()}


def _repeated_rows(t: pa.Table) -> np.ndarray:
  """Rows equal in every column to an earlier row of ``t`` (a record written twice: kept
  once, counted)."""
  if not t.num_rows:
    return np.zeros(0, bool)
  index = "__row__"
  firsts = t.append_column(index, pa.array(np.arange(t.num_rows))).group_by(
      t.column_names, use_threads=False).aggregate([(index, "min")])
  repeated = np.ones(t.num_rows, bool)
  repeated[firsts.column(f"{index}_min").to_numpy()] = False
  return repeated


class LogBuilder:
  """Collects exposures and their events, then builds the sorted event table."""

  def __init__(self):
    self._exp: list[tuple] = []
    self._ev: list[tuple] = []
    self._n = 0

  def add_exposures(self, ts, user, domain: str, item, author) -> np.ndarray:
    """Adds exposures (and their ``exposure`` events); returns their indices for add_events."""
    n = len(ts)
    cols = [np.asarray(c, np.int64) for c in (ts, user, item, author)]
    self._exp.append((*cols, np.full(n, S.DOMAIN_CODE[domain]), np.full(n, len(self._exp)),
                      np.arange(n)))
    idx = self._n + np.arange(n)
    self._n += n
    self.add_events(idx, cols[0], S.EXPOSURE, 0.0)
    return idx

  def add_events(self, exposure_idx, ts, event: str, value) -> None:
    n = len(exposure_idx)
    self._ev.append((np.asarray(exposure_idx, np.int64), np.asarray(ts, np.int64),
                     np.full(n, S.EVENT_CODE[event]),
                     np.broadcast_to(np.asarray(value, np.float64), (n,))))

  def build(self) -> pa.Table:
    ts, user, item, author, dom, src, row = (
        np.concatenate([e[k] for e in self._exp]) if self._exp else np.zeros(0, np.int64)
        for k in range(7))
    eid = np.empty(ts.size, np.int64)
    eid[np.lexsort((row, src, item, dom, user, ts))] = np.arange(ts.size)
    idx, ets, ev, val = (np.concatenate([e[k] for e in self._ev]) if self._ev
                         else np.zeros(0) for k in range(4))
    idx, ev = idx.astype(np.int64), ev.astype(np.int64)
    rank = np.array([RANK[e] for e in S.EVENTS])[ev]
    order = np.lexsort((rank, eid[idx], ets))
    idx, ets, ev, val = idx[order], ets[order], ev[order], val[order]
    strings = lambda codes, names: pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32()), pa.array(list(names))).cast(pa.string())
    return pa.table({
        "ts_ms": ets.astype(np.int64), "user_id": user[idx], "exposure_id": eid[idx],
        "domain": strings(dom[idx], S.DOMAINS), "item_id": item[idx],
        "author_id": author[idx], "event": strings(ev, S.EVENTS),
        "value": val.astype(np.float64)}, schema=S.EVENT_SCHEMA)


def _pair_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  if a.size == 0:
    return np.zeros(0, np.int64)
  _, inv = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
  return inv.reshape(-1)


def attach_to_spans(span_user, span_item, start, end, user, item, ts) -> np.ndarray:
  """For each (user, item, ts) the index of the span of the same (user, item) that contains
  ts (start <= ts <= end; the latest-starting one), or -1 when none does."""
  ns = len(start)
  if ns == 0 or len(ts) == 0:
    return np.full(len(ts), -1, np.int64)
  key = _pair_ids(np.concatenate([span_user, user]), np.concatenate([span_item, item]))
  t = np.concatenate([start, ts]).astype(np.int64)
  kind = np.r_[np.zeros(ns, np.int8), np.ones(len(ts), np.int8)]  # spans first on ties
  order = np.lexsort((kind, t, key))
  pos = np.where(kind[order] == 0, np.arange(order.size), -1)
  last = np.maximum.accumulate(pos)
  q = np.flatnonzero(kind[order] == 1)
  w = last[q]
  span = np.where(w >= 0, order[np.maximum(w, 0)], 0)
  ok = (w >= 0) & (key[order[np.maximum(w, 0)]] == key[order[q]])
  ok &= t[order[q]] <= np.asarray(end, np.int64)[span]
  out = np.full(len(ts), -1, np.int64)
  out[order[q] - ns] = np.where(ok, span, -1)
  return out


def lookup(keys, values, query, default):
  """values[i] where keys[i] == query (per query element), else ``default`` (scalar or aligned)."""
  keys, query = np.asarray(keys), np.asarray(query)
  if keys.size == 0:
    return np.broadcast_to(np.asarray(default), query.shape).copy()
  srt = np.argsort(keys, kind="stable")
  pos = np.minimum(np.searchsorted(keys[srt], query), keys.size - 1)
  return np.where(keys[srt][pos] == query, np.asarray(values)[srt][pos], default)


def mode_by_key(author: np.ndarray, category: np.ndarray):
  """(distinct keys, each one's most frequent value; ties -> the smallest value)."""
  if author.size == 0:
    return author, category
  pairs, counts = np.unique(np.stack([author, category], 1), axis=0, return_counts=True)
  order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
  pairs = pairs[order]
  first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
  return pairs[first, 0], pairs[first, 1]


def first_by_key(table: pa.Table, key: str, stats: ConvertStats | None = None,
                 name: str = "") -> pa.Table:
  """Keeps the first row of each key; the others (rows of a source file that differ but share
  a key: exact duplicates went at reading) are counted in ``stats.dropped``."""
  _, first = np.unique(table.column(key).to_numpy(), return_index=True)
  if stats is not None:
    stats.dropped[f"{name}: conflicting rows of one {key} (first kept)"] = (
        table.num_rows - first.size)
  return table.take(np.sort(first))


def add_missing(table: pa.Table, key: str, ids: np.ndarray, fill: dict) -> pa.Table:
  """Appends a row per id of ``ids`` absent from ``table[key]`` (other columns from ``fill``:
  a scalar or an array aligned with ``ids``)."""
  ids = np.asarray(ids, np.int64)
  new, at = np.unique(ids, return_index=True)
  keep = ~np.isin(new, table.column(key).to_numpy())
  new, at = new[keep], at[keep]
  cols = {key: new}
  for f in table.schema:
    if f.name != key:
      v = fill[f.name]
      cols[f.name] = np.asarray(v)[at] if np.ndim(v) else np.full(new.size, v)
  extra = pa.table({k: pa.array(v, table.schema.field(k).type) for k, v in cols.items()},
                   schema=table.schema)
  return pa.concat_tables([table, extra])


def complete_lives(lives: pa.Table, events: pa.Table, stats: ConvertStats) -> pa.Table:
  """Merges per-day rows of a room, fills a null end with the room's last event time, and adds
  rooms seen in events but absent from the room file (their span = their events' span).

  ``lives`` has LIVE_SCHEMA's columns with a nullable ``end_ms``."""
  live = events.filter(pc.equal(events.column("domain"), S.LIVE))
  seen = live.group_by("item_id", use_threads=False).aggregate(
      [("ts_ms", "min"), ("ts_ms", "max"), ("author_id", "first")])
  grouped = lives.group_by("live_id", use_threads=False).aggregate(
      [("author_id", "first"), ("category", "first"), ("start_ms", "min"), ("end_ms", "max")])
  lid = grouped.column("live_id").to_numpy()
  start = grouped.column("start_ms_min").to_numpy()
  end = grouped.column("end_ms_max")
  null_end = pc.is_null(end).to_numpy(zero_copy_only=False)
  end = pc.fill_null(end, 0).to_numpy()
  seen_id = seen.column("item_id").to_numpy()
  last = lookup(seen_id, seen.column("ts_ms_max").to_numpy(), lid, start)
  end = np.where(null_end, last, end)
  stats.notes["lives with null end (set to last event)"] = int(null_end.sum())
  stats.notes["lives ending before they start (end set to start)"] = int(
      np.count_nonzero(end < start))
  out = pa.table({"live_id": lid, "author_id": grouped.column("author_id_first"),
                  "category": grouped.column("category_first"), "start_ms": start,
                  "end_ms": np.maximum(end, start)}, schema=S.LIVE_SCHEMA)
  n0 = out.num_rows
  out = add_missing(out, "live_id", seen_id, {
      "author_id": seen.column("author_id_first").to_numpy(), "category": 0,
      "start_ms": seen.column("ts_ms_min").to_numpy(),
      "end_ms": seen.column("ts_ms_max").to_numpy()})
  stats.notes["lives only seen in events"] = out.num_rows - n0
  return out


def check_output(src: str, out_dir: str, overwrite: bool) -> None:
  """Refuses, before reading anything, an output that overlaps the source folder, exists
  without ``overwrite``, or is not a log folder that ``overwrite`` may replace."""
  files.check_apart({"--src": src}, {"--out": out_dir})
  if os.path.lexists(out_dir) and not overwrite:
    raise FileExistsError(f"--out={out_dir} already exists (pass --overwrite to replace it)")
  files.check_replaceable(out_dir, "--out", io.LOG_MARKS, "an event-log folder")


def finish(events: pa.Table, side: dict[str, pa.Table], out_dir: str, overwrite: bool,
           stats: ConvertStats) -> V.LogStats:
  """Validates the converted log in memory, then writes it atomically."""
  log_stats = V.validate_tables(events, side)
  stats.events = dict(log_stats.events)
  io.write_log(out_dir, events, side, overwrite=overwrite)
  return log_stats
