"""Checks that an event-log folder (or an in-memory event table) keeps the log's contract.

``validate_log(log_dir)`` reads every table of a log folder and raises
``LogValidationError`` at the first broken rule, naming the file, the column, the problem and
one offending row (its index and values); on success it returns ``LogStats``. Producers that
validate their output call ``validate_tables`` on the tables in memory *before* handing them
to ``io.write_log``, so that a bad log is never renamed into place. Validation only reads.

Rules (all vectorised; see ``data/README.md`` for the prose version):

* every file exists and is readable Parquet; every contract column is present, without
  nulls, with the contract type or a lossless widening of it (int32 -> int64, float32 ->
  float64), never a lossy one (float -> int, string -> int, int64 -> int32);
* ids and timestamps are >= 0; side-table keys are unique; a live's start <= end;
* ``domain`` is a known domain, ``event`` a known event allowed in that domain;
* ``value`` is finite; 0 for exposure/click/like/comment/follow, >= 0 for watch_end, > 0
  for gift;
* an exposure has exactly one ``exposure`` event, which is its first row and no later than
  any of its events; one user/item/author/domain throughout; at most one click and one
  watch_end; a live watch_end follows its click (a short-video watch_end, the end of a play,
  needs none); live like/comment/gift lie inside the watch (at or after the click, at or
  before the watch_end when there is one);
* rows are sorted by (ts_ms, exposure_id);
* every live-domain item_id is a live_id of lives.parquet.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mcjax.eventlog import schema as S


class LogValidationError(ValueError):
  """A log (or table) breaks the event-log contract; the message says where and how."""


# Source types that convert losslessly into each contract type.
_WIDENS = {
    pa.int64(): (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                 pa.uint8(), pa.uint16(), pa.uint32()),
    pa.int32(): (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()),
    pa.float64(): (pa.float16(), pa.float32(), pa.float64()),
    pa.float32(): (pa.float16(), pa.float32()),
    pa.bool_(): (pa.bool_(),),
    pa.string(): (pa.string(), pa.large_string(), pa.string_view()),
}

_ZERO_VALUE_EVENTS = (S.EXPOSURE, S.CLICK, S.LIKE, S.COMMENT, S.FOLLOW)
_IN_WATCH_EVENTS = (S.LIKE, S.COMMENT, S.GIFT)
_KEYS = {"users.parquet": "user_id", "authors.parquet": "author_id",
         "lives.parquet": "live_id", "videos.parquet": "video_id",
         "exposures.parquet": "exposure_id"}


@dataclasses.dataclass
class LogStats:
  """What a valid log holds."""
  rows: int
  events: dict[str, int]             # event -> rows
  domains: dict[str, int]            # domain -> rows
  domain_events: dict[str, int]      # "domain/event" -> rows
  exposures: int
  users: int
  items: int
  authors: int
  min_ts_ms: int | None
  max_ts_ms: int | None
  side_rows: dict[str, int] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    """A few human-readable lines."""
    lines = [f"rows {self.rows}, exposures {self.exposures}, users {self.users}, "
             f"items {self.items}, authors {self.authors}"]
    if self.min_ts_ms is not None:
      span_h = (self.max_ts_ms - self.min_ts_ms) / 3.6e6
      lines.append(f"time span {self.min_ts_ms} .. {self.max_ts_ms} ms ({span_h:.2f} h)")
    lines.append("rows per domain: " + ", ".join(f"{k}={v}" for k, v in self.domains.items()))
    lines.append("rows per event: " + ", ".join(f"{k}={v}" for k, v in self.events.items()))
    lines.append("rows per domain/event: "
                 + ", ".join(f"{k}={v}" for k, v in self.domain_events.items()))
    if self.side_rows:
      lines.append("side tables: " + ", ".join(f"{k}={v}" for k, v in self.side_rows.items()))
    return "\n".join(lines)


def _row(table: pa.Table, i: int) -> str:
  values = table.slice(int(i), 1).to_pylist()[0]
  return f"row {int(i)}: " + ", ".join(f"{k}={v!r}" for k, v in values.items())


def _fail(where: str, column: str | None, problem: str, table: pa.Table | None = None,
          mask: np.ndarray | None = None, row: int | None = None) -> None:
  """Raises LogValidationError; ``mask`` (or ``row``) points at the offending row(s)."""
  msg = f"{where}: column '{column}': {problem}" if column else f"{where}: {problem}"
  if mask is not None:
    bad = np.flatnonzero(mask)
    row = int(bad[0])
    msg += f" ({bad.size} row(s))"
  if table is not None and row is not None:
    msg += f"; e.g. {_row(table, row)}"
  raise LogValidationError(msg)


def _check_if(where, column, problem, table, mask) -> None:
  if np.any(mask):
    _fail(where, column, problem, table, mask)


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
  """Checks columns, types and nulls; returns the table cast to ``schema`` (its columns only)."""
  for field in schema:
    if field.name not in table.column_names:
      _fail(where, field.name, f"missing column (has {table.column_names})")
    typ = table.schema.field(field.name).type
    if pa.types.is_dictionary(typ):
      typ = typ.value_type
    if typ not in _WIDENS[field.type]:
      _fail(where, field.name, f"wrong type {typ}, expected {field.type} "
            f"(or a lossless widening: {', '.join(map(str, _WIDENS[field.type]))})")
    col = table.column(field.name)
    if col.null_count:
      _fail(where, field.name, "null values", table, pc.is_null(col).to_numpy(zero_copy_only=False))
  columns = []
  for field in schema:
    col = table.column(field.name)
    if pa.types.is_dictionary(col.type):
      col = col.cast(col.type.value_type)
    columns.append(col.cast(field.type))
  return pa.Table.from_arrays(columns, schema=schema)


def _np(table: pa.Table, name: str) -> np.ndarray:
  return table.column(name).to_numpy()


def _check_ids(table: pa.Table, where: str, names) -> None:
  for name in names:
    _check_if(where, name, "negative value", table, _np(table, name) < 0)


def validate_side(name: str, table: pa.Table, where: str | None = None) -> pa.Table:
  """Validates one side or oracle table (a key of SIDE_TABLES / ORACLE_TABLES); returns it cast."""
  where = where or name
  schema = S.SIDE_TABLES.get(name) or S.ORACLE_TABLES.get(name)
  if schema is None:
    _fail(where, None, f"unknown table {name}")
  table = conform(table, schema, where)
  ints = [f.name for f in schema if pa.types.is_integer(f.type)]
  _check_ids(table, where, [n for n in ints if n.endswith("_id") or n.endswith("_ms")])
  floats = [f.name for f in schema if pa.types.is_floating(f.type)]
  for f in floats:
    v = _np(table, f)
    _check_if(where, f, "NaN or infinite value", table, ~np.isfinite(v))
    _check_if(where, f, "negative value", table, v < 0)
  key = _KEYS.get(name)
  if key is not None and table.num_rows:
    ids = _np(table, key)
    order = np.argsort(ids, kind="stable")
    dup = np.zeros(ids.size, bool)
    dup[order[1:]] = ids[order[1:]] == ids[order[:-1]]
    _check_if(where, key, "duplicate key", table, dup)
  if "start_ms" in schema.names:
    _check_if(where, "end_ms", "end_ms before start_ms", table,
              _np(table, "end_ms") < _np(table, "start_ms"))
  return table


def _codes(table: pa.Table, column: str, names, where: str) -> np.ndarray:
  """Maps a string column to indices of ``names``; fails on unknown values."""
  idx = pc.index_in(table.column(column), value_set=pa.array(list(names)))
  unknown = pc.is_null(idx).to_numpy(zero_copy_only=False)
  _check_if(where, column, f"unknown {column} (expected one of {list(names)})", table, unknown)
  return pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _check_values(table, where, ev, value, dom) -> None:
  _check_if(where, "value", "NaN or infinite value", table, ~np.isfinite(value))
  code = S.EVENT_CODE
  for e in _ZERO_VALUE_EVENTS:
    _check_if(where, "value", f"{e} must have value 0", table, (ev == code[e]) & (value != 0))
  _check_if(where, "value", f"negative {S.WATCH_END} value", table,
            (ev == code[S.WATCH_END]) & (value < 0))
  _check_if(where, "value", "gift value must be > 0", table, (ev == code[S.GIFT]) & (value <= 0))
  for d, allowed in S.DOMAIN_EVENTS.items():
    for e in S.EVENTS:
      if e not in allowed:
        _check_if(where, "event", f"event '{e}' not allowed in domain '{d}'", table,
                  (dom == S.DOMAIN_CODE[d]) & (ev == code[e]))


def _per_group_ts(g, n_groups, mask, ts, fill) -> np.ndarray:
  out = np.full(n_groups, fill, np.int64)
  out[g[mask]] = ts[mask]
  return out


def _check_exposures(table, where, ts, ev, dom) -> int:
  """Per-exposure rules; returns the number of exposures."""
  code = S.EVENT_CODE
  exp = _np(table, "exposure_id")
  _, g = np.unique(exp, return_inverse=True)
  n = int(g.max()) + 1 if g.size else 0
  order = np.argsort(g, kind="stable")
  starts = np.r_[0, np.flatnonzero(np.diff(g[order])) + 1] if g.size else np.zeros(0, int)
  first = order[starts]                      # first row (in file order) of each exposure
  is_exp = ev == code[S.EXPOSURE]
  n_exp = np.bincount(g, weights=is_exp, minlength=n)
  _check_if(where, "event", "exposure without an 'exposure' event", table, n_exp[g] == 0)
  _check_if(where, "event", "exposure with several 'exposure' events", table,
            is_exp & (n_exp[g] > 1))
  for col in ("user_id", "item_id", "author_id"):
    v = _np(table, col)
    _check_if(where, col, f"{col} differs within one exposure_id", table, v != v[first][g])
  _check_if(where, "domain", "domain differs within one exposure_id", table, dom != dom[first][g])
  exp_ts = _per_group_ts(g, n, is_exp, ts, 0)
  _check_if(where, "ts_ms", "event before its exposure's 'exposure' event", table,
            ts < exp_ts[g])
  is_first = np.zeros(ts.size, bool)
  is_first[first] = True
  _check_if(where, "event", "an exposure's first row is not its 'exposure' event", table,
            is_first & ~is_exp)
  for e in (S.CLICK, S.WATCH_END):
    m = ev == code[e]
    cnt = np.bincount(g, weights=m, minlength=n)
    _check_if(where, "event", f"several '{e}' events in one exposure", table, m & (cnt[g] > 1))
  live = dom == S.DOMAIN_CODE[S.LIVE]
  is_click, is_end = ev == code[S.CLICK], live & (ev == code[S.WATCH_END])
  big = np.iinfo(np.int64).max
  click_ts = _per_group_ts(g, n, is_click, ts, big)
  end_ts = _per_group_ts(g, n, is_end, ts, big)
  _check_if(where, "event", "live watch_end without a click in its exposure", table,
            is_end & (click_ts[g] == big))
  _check_if(where, "ts_ms", "live watch_end before its click", table,
            is_end & (ts < click_ts[g]))
  inside = np.isin(ev, [code[e] for e in _IN_WATCH_EVENTS]) & live
  _check_if(where, "ts_ms", "live like/comment/gift before its click (or without one)", table,
            inside & (ts < click_ts[g]))
  _check_if(where, "ts_ms", "live like/comment/gift after its watch_end", table,
            inside & (ts > end_ts[g]))
  return n


def validate_events(table: pa.Table, where: str = S.EVENTS_FILE, *,
                    live_ids: np.ndarray | None = None) -> LogStats:
  """Validates an event table; ``live_ids`` (lives.parquet's live_id) enables the live check."""
  table = conform(table, S.EVENT_SCHEMA, where)
  ts = _np(table, "ts_ms")
  _check_ids(table, where, ["ts_ms", "user_id", "exposure_id", "item_id", "author_id"])
  dom = _codes(table, "domain", S.DOMAINS, where)
  ev = _codes(table, "event", S.EVENTS, where)
  _check_values(table, where, ev, _np(table, "value"), dom)
  n_exposures = _check_exposures(table, where, ts, ev, dom)
  exp = _np(table, "exposure_id")
  unsorted = np.zeros(ts.size, bool)
  unsorted[1:] = (ts[1:] < ts[:-1]) | ((ts[1:] == ts[:-1]) & (exp[1:] < exp[:-1]))
  _check_if(where, "ts_ms", "rows not sorted by (ts_ms, exposure_id)", table, unsorted)
  item = _np(table, "item_id")
  if live_ids is not None:
    live = dom == S.DOMAIN_CODE[S.LIVE]
    _check_if(where, "item_id", "live item_id missing from lives.parquet", table,
              live & ~np.isin(item, np.asarray(live_ids)))
  count = lambda codes, names: {k: int(v) for k, v in
                                zip(names, np.bincount(codes, minlength=len(names))) if v}
  pair = dom * len(S.EVENTS) + ev
  pairs = [f"{d}/{e}" for d in S.DOMAINS for e in S.EVENTS]
  return LogStats(
      rows=table.num_rows, events=count(ev, S.EVENTS), domains=count(dom, S.DOMAINS),
      domain_events=count(pair, pairs), exposures=n_exposures,
      users=int(np.unique(_np(table, "user_id")).size), items=int(np.unique(item).size),
      authors=int(np.unique(_np(table, "author_id")).size),
      min_ts_ms=int(ts.min()) if ts.size else None, max_ts_ms=int(ts.max()) if ts.size else None)


def validate_tables(events: pa.Table, side: dict[str, pa.Table],
                    oracle: dict[str, pa.Table] | None = None, where: str = "") -> LogStats:
  """Validates a whole log held in memory (the arguments of ``io.write_log``)."""
  join = lambda name: os.path.join(where, name) if where else name
  checked = {}
  for name in S.SIDE_TABLES:
    if name not in side:
      _fail(join(name), None, "missing side table")
    checked[name] = validate_side(name, side[name], join(name))
  side_rows = {name: t.num_rows for name, t in checked.items()}
  for name, table in (oracle or {}).items():
    validate_side(name, table, join(os.path.join(S.ORACLE_DIR, name)))
  stats = validate_events(events, join(S.EVENTS_FILE),
                          live_ids=_np(checked["lives.parquet"], "live_id"))
  stats.side_rows = side_rows
  return stats


def _read(log_dir: str, name: str, where: str) -> pa.Table:
  path = os.path.join(log_dir, name)
  if not os.path.isfile(path):
    _fail(where, None, "missing file")
  try:
    return pq.read_table(path)
  except (pa.ArrowException, OSError) as e:
    _fail(where, None, f"unreadable Parquet file ({type(e).__name__}: {e})")


def validate_log(log_dir: str) -> LogStats:
  """Validates a log folder; raises LogValidationError, or returns its statistics."""
  base = os.path.basename(os.path.normpath(log_dir))
  if not os.path.isdir(log_dir):
    _fail(base, None, "log folder does not exist")
  where = lambda name: os.path.join(base, name)
  side = {name: _read(log_dir, name, where(name)) for name in S.SIDE_TABLES}
  oracle = {}
  oracle_dir = os.path.join(log_dir, S.ORACLE_DIR)
  if os.path.isdir(oracle_dir):
    for name in sorted(os.listdir(oracle_dir)):
      rel = os.path.join(S.ORACLE_DIR, name)
      if name not in S.ORACLE_TABLES:
        _fail(where(rel), None, f"unknown oracle table (expected {sorted(S.ORACLE_TABLES)})")
      oracle[name] = _read(log_dir, rel, where(rel))
  events = _read(log_dir, S.EVENTS_FILE, where(S.EVENTS_FILE))
  return validate_tables(events, side, oracle, where=base)
