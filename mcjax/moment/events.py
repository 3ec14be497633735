"""Loading an event log and organising it into sorted numpy arrays for the Moment engine.

``read_tables`` accepts a log folder (see ``mcjax.eventlog.schema``), a ``LogTables`` or a
mapping of in-memory pyarrow tables; ``load_log`` conforms them to the schemas and returns a
``Log``: the events sorted by (ts_ms, exposure_id) with small-integer event/domain codes, one
row per exposure (its exposure event, and the time of its first event of every kind), and the
side tables as id lookups. Events of an exposure without an exposure event, or before it, are
dropped and counted in ``Log.stats``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.eventlog import io
from mcjax.eventlog import schema as S

NEVER = np.iinfo(np.int64).max  # the time of an event that did not happen
ORACLE_EXPOSURES = "exposures.parquet"

_TABLES = {  # LogTables field -> (file name, schema)
    "events": (S.EVENTS_FILE, S.EVENT_SCHEMA),
    "users": ("users.parquet", S.USER_SCHEMA),
    "authors": ("authors.parquet", S.AUTHOR_SCHEMA),
    "lives": ("lives.parquet", S.LIVE_SCHEMA),
    "videos": ("videos.parquet", S.VIDEO_SCHEMA),
    "oracle_exposures": (f"{S.ORACLE_DIR}/{ORACLE_EXPOSURES}", S.ORACLE_EXPOSURE_SCHEMA),
}


@dataclasses.dataclass(frozen=True)
class LogTables:
  """A log held in memory: the event table, the side tables and the optional oracle."""
  events: pa.Table
  users: pa.Table
  authors: pa.Table
  lives: pa.Table
  videos: pa.Table
  oracle_exposures: pa.Table | None = None


def read_tables(src) -> LogTables:
  """A log folder path, a ``LogTables``, or a mapping -> ``LogTables``.

  Mapping keys are the ``LogTables`` field names or the file names inside a log folder
  (``events.parquet``, ``users.parquet``, ..., ``_oracle/exposures.parquet``).
  """
  if isinstance(src, LogTables):
    return src
  if isinstance(src, (str, os.PathLike)):
    if not os.path.isdir(src):
      raise FileNotFoundError(f"event log folder {os.fspath(src)!r} does not exist")
    side = {name: io.read_side(src, _TABLES[name][0])
            for name in ("users", "authors", "lives", "videos")}
    return LogTables(events=io.read_events(src), **side,
                     oracle_exposures=io.read_oracle(src, ORACLE_EXPOSURES))
  if isinstance(src, Mapping):
    by_file = {file: name for name, (file, _) in _TABLES.items()}
    tables = {}
    for key, table in src.items():
      name = key if key in _TABLES else by_file.get(key)
      if name is None:
        raise ValueError(f"unknown log table {key!r}; expected one of "
                         f"{sorted(_TABLES) + sorted(by_file)}")
      tables[name] = table
    missing = [n for n in _TABLES if n != "oracle_exposures" and n not in tables]
    if missing:
      raise ValueError(f"log tables {missing} not given")
    return LogTables(**tables)
  raise TypeError(f"expected a log folder, LogTables or a mapping of tables, got {type(src)}")


def _conform(table: pa.Table, name: str) -> pa.Table:
  file, schema = _TABLES[name]
  return io.conform(table, schema, file)


def _codes(column: pa.ChunkedArray, names: tuple, what: str) -> np.ndarray:
  codes = pc.index_in(column, value_set=pa.array(names))
  if codes.null_count:
    bad = pc.unique(pc.filter(column, pc.is_null(codes))).to_pylist()
    raise ValueError(f"{S.EVENTS_FILE}: unknown {what} value(s) {bad[:10]}; expected {names}")
  return codes.to_numpy().astype(np.int8)


def first_rows(group: np.ndarray, mask: np.ndarray | None, n: int) -> np.ndarray:
  """Index of the first row with ``mask`` (None: every row) in each of ``n`` groups (-1 if
  none).

  Rows must be sorted by time, so the first row is the earliest: the smallest row of each
  group, found with one unbuffered ``np.minimum.at`` (several times faster than sorting).
  """
  rows = np.arange(len(group)) if mask is None else np.flatnonzero(mask)
  out = np.full(n, len(group), np.int64)
  np.minimum.at(out, group[rows], rows)
  out[out == len(group)] = -1
  return out


def first_rows_by_code(group: np.ndarray, code: np.ndarray, n: int, n_codes: int) -> np.ndarray:
  """(n, n_codes): ``first_rows(group, code == c, n)`` for every code c, in one pass over
  the (group, code) keys."""
  keys = group.astype(np.int64) * n_codes + code
  return first_rows(keys, None, n * n_codes).reshape(n, n_codes)


def gather(values: np.ndarray, rows: np.ndarray, default) -> np.ndarray:
  """``values[rows]`` where ``rows >= 0``, else ``default``."""
  out = np.full(rows.shape, default, values.dtype)
  hit = rows >= 0
  out[hit] = values[rows[hit]]
  return out


@dataclasses.dataclass(frozen=True)
class Lookup:
  """One side table, looked up by its int64 id column (searchsorted on the sorted ids)."""
  name: str
  ids: np.ndarray
  columns: dict

  @classmethod
  def build(cls, table: pa.Table, name: str, key: str) -> "Lookup":
    table = _conform(table, name)
    ids = table[key].to_numpy()
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = ids[1:][ids[1:] == ids[:-1]]
    if dup.size:
      raise ValueError(f"{_TABLES[name][0]}: duplicate {key} {np.unique(dup)[:10].tolist()}")
    columns = {c: table[c].to_numpy()[order] for c in table.column_names if c != key}
    return cls(name, ids, columns)

  def rows(self, ids: np.ndarray) -> np.ndarray:
    """Row of each id, -1 where the table has no such id."""
    ids = np.asarray(ids)
    if not len(self.ids):
      return np.full(ids.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
    return np.where(self.ids[pos] == ids, pos, -1)

  def get(self, column: str, ids: np.ndarray, default) -> np.ndarray:
    return gather(self.columns[column], self.rows(ids), default)


@dataclasses.dataclass(frozen=True)
class Exposures:
  """One row per exposure (both domains), in order of exposure id."""
  exposure_id: np.ndarray  # int64
  ts: np.ndarray           # time of the exposure event
  user: np.ndarray
  item: np.ndarray
  author: np.ndarray
  domain: np.ndarray       # int8 DOMAIN_CODE
  first: np.ndarray        # (n, len(EVENTS)) time of the first event of each kind, NEVER if none
  watch_value: np.ndarray  # first watch_end value: seconds watched / played (NaN if none)

  def __len__(self) -> int:
    return len(self.exposure_id)


@dataclasses.dataclass(frozen=True)
class Events:
  """Events of whole exposures, sorted by (ts_ms, exposure_id), and those exposures."""
  ts: np.ndarray       # int64
  xi: np.ndarray       # int64 row of the event's exposure in ``exposures``
  code: np.ndarray     # int8 EVENT_CODE
  value: np.ndarray    # float64
  exposures: Exposures


@dataclasses.dataclass(frozen=True)
class Log(Events):
  """An event log organised for the engine: all its events, with the side tables."""
  users: Lookup
  authors: Lookup
  lives: Lookup
  videos: Lookup
  oracle: Lookup | None
  stats: dict


def event_columns(events: pa.Table) -> dict:
  """The event table as numpy columns for ``organize``: conformed to the schema, with
  ``code`` / ``domain`` as small-integer codes; raises on events not allowed in their domain.

  Works on the whole table or on any batch of its rows (the Beam engine reads in batches).
  """
  ev = _conform(events, "events")
  code = _codes(ev["event"], S.EVENTS, "event")
  domain = _codes(ev["domain"], S.DOMAINS, "domain")
  allowed = np.zeros((len(S.DOMAINS), len(S.EVENTS)), bool)
  for d, names in S.DOMAIN_EVENTS.items():
    allowed[S.DOMAIN_CODE[d], [S.EVENT_CODE[e] for e in names]] = True
  bad = ~allowed[domain, code]
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{S.EVENTS_FILE}: {int(bad.sum())} event(s) not allowed in their domain, "
                     f"e.g. {S.EVENTS[code[i]]!r} in {S.DOMAINS[domain[i]]!r}")
  return {"ts": ev["ts_ms"].to_numpy(), "xid": ev["exposure_id"].to_numpy(), "code": code,
          "domain": domain, "value": ev["value"].to_numpy(), "user": ev["user_id"].to_numpy(),
          "item": ev["item_id"].to_numpy(), "author": ev["author_id"].to_numpy()}


@dataclasses.dataclass(frozen=True)
class Organized(Events):
  """The kept events of some whole exposures (ties in time broken by log row)."""
  row: np.ndarray     # int64 index into the ``organize`` input of each kept event
  first_row: np.ndarray  # (n,) index into the ``organize`` input of each exposure's event
  stats: dict


def organize(ts, xid, code, domain, value, user, item, author,
             seq: np.ndarray | None = None) -> Organized:
  """Events of whole exposures -> kept events (sorted) and one row per exposure.

  The rules of ``load_log``: events are ordered by (ts_ms, exposure_id), ties in log order
  (``seq``, the event's row in the log; None: the given order is the log order); an exposure
  is its first ``exposure`` event; events of an exposure without one, or before it, and later
  ``exposure`` events are dropped and counted. Any set of whole exposures may come in (the
  whole log in process, one key's exposures in the Beam engine): nothing depends on the others.
  """
  n_in = len(ts)
  if seq is not None:
    order = np.lexsort((seq, xid, ts))
  else:
    step, same = np.diff(ts), np.diff(xid)
    sorted_ = ((step > 0) | ((step == 0) & (same >= 0))).all()  # logs are written sorted
    order = None if sorted_ else np.lexsort((xid, ts))
  if order is not None:
    ts, xid, code, domain = ts[order], xid[order], code[order], domain[order]
    value, user, item, author = value[order], user[order], item[order], author[order]
  source = np.arange(n_in) if order is None else order

  is_exposure = code == S.EVENT_CODE[S.EXPOSURE]
  ids, xi = np.unique(xid, return_inverse=True)
  xi = xi.reshape(-1)
  row = first_rows(xi, is_exposure, len(ids))
  has = row >= 0
  exposure_ts = gather(ts, row, NEVER)
  late_ok = ts >= exposure_ts[xi]
  keep = has[xi] & late_ok & (~is_exposure | (np.arange(len(ts)) == row[xi]))
  stats = {
      "events": int(len(ts)),
      "orphan_events": int((~has[xi]).sum()),
      "events_before_exposure": int((has[xi] & ~late_ok).sum()),
      "duplicate_exposure_events": int(is_exposure.sum() - has.sum()),
  }
  row = row[has]
  n = len(row)
  exposure_meta = dict(exposure_id=ids[has], ts=ts[row], user=user[row], item=item[row],
                       author=author[row], domain=domain[row])
  xi = (np.cumsum(has) - 1)[xi[keep]]
  kept = np.flatnonzero(keep)
  ts, code, value = ts[keep], code[keep], value[keep]
  first_row = first_rows_by_code(xi, code, n, len(S.EVENTS))
  first = gather(ts, first_row, NEVER)
  watch = first_row[:, S.EVENT_CODE[S.WATCH_END]]
  exposures = Exposures(**exposure_meta, first=first,
                        watch_value=gather(value, watch, np.nan))
  return Organized(ts=ts, xi=xi, code=code, value=value, row=source[kept],
                   exposures=exposures, first_row=source[row], stats=stats)


def load_log(src) -> Log:
  """Reads, validates and organises a log (any form ``read_tables`` accepts)."""
  tables = read_tables(src)
  org = organize(**event_columns(tables.events))
  oracle = None
  if tables.oracle_exposures is not None:
    oracle = Lookup.build(tables.oracle_exposures, "oracle_exposures", "exposure_id")
  return Log(ts=org.ts, xi=org.xi, code=org.code, value=org.value, exposures=org.exposures,
             users=Lookup.build(tables.users, "users", "user_id"),
             authors=Lookup.build(tables.authors, "authors", "author_id"),
             lives=Lookup.build(tables.lives, "lives", "live_id"),
             videos=Lookup.build(tables.videos, "videos", "video_id"),
             oracle=oracle, stats=org.stats)
