"""Scoring requests -> model inputs, computed by the Moment engine's own feature code.

A request is (user_id, ts_ms, candidate live_ids). ``RequestBuilder(source, cfg)`` holds an
engine ``Context`` over an event log (a log folder, in-memory tables, an ``EventBuffer``
that new events are appended to, or a running ``mcjax.stream.engine.StreamEngine``, whose
live state it reads without rebuilding anything: per-request time does not grow with the
number of events before) and turns requests into the padded batch the model reads:
``Context.request_features`` (the function the engine uses for every training sample and
evaluation record) at query time q = ts_ms, then the one batch path (``mcjax.contract.batch``):
padding (``pad_table``) and the host transform (``host_batch``). So a request for a logged
exposure at its exposure time gives exactly that exposure's evaluation-record inputs.

What a request sees: events with ts < q only; the live's author and category come from
lives.parquet (for a live missing there: the author of its latest exposure in the log, category
-1); side features of ids missing from their table are -1. Unknown ids are scored (the model
hashes them) and counted by ``RequestBuilder.unseen``.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.eventlog import schema as ES
from mcjax.eventlog.io import conform
from mcjax.moment.config import MomentConfig
from mcjax.moment.engine import Context
from mcjax.moment.events import LogTables, load_log, read_tables
from mcjax.contract import batch as batch_lib
from mcjax.contract import schema as SS
from mcjax.contract.batch import host_batch

_SIDE_KEYS = {"users": "user_id", "authors": "author_id", "lives": "live_id",
              "videos": "video_id"}
_SIDE_SCHEMAS = {"users": ES.USER_SCHEMA, "authors": ES.AUTHOR_SCHEMA,
                 "lives": ES.LIVE_SCHEMA, "videos": ES.VIDEO_SCHEMA}


def _as_table(rows, schema: pa.Schema, what: str) -> pa.Table:
  """A pyarrow table or a mapping of columns -> a table of ``schema`` (extra columns dropped)."""
  table = rows if isinstance(rows, pa.Table) else pa.table(dict(rows))
  return conform(table, schema, what)


class EventBuffer:
  """An event log held in memory that grows: events (and side-table rows) are appended as
  they arrive, and requests see every event appended so far with ts < their time.

  ``EventBuffer(src)`` starts from anything ``events.read_tables`` accepts (a log folder,
  ``LogTables`` or a mapping of tables; events may be empty). ``append(events, lives=...)``
  adds event rows (``EVENT_SCHEMA`` columns, any order) and side rows (a row whose id is
  already there replaces it). Delivery may repeat: an appended event row equal in every
  column to a row already in the buffer (or to an earlier row of the same append) is dropped
  and counted in ``repeated``, so an event sent twice counts once. The engine's indexes are
  rebuilt from the whole buffer on the first request after an append (seconds for a day of
  the default world; see benchmarks/RESULTS.md), so append in batches, e.g. once a second,
  not per event; a ``StreamEngine`` source has no rebuild.
  """

  def __init__(self, src):
    tables = read_tables(src)
    self._events = [_as_table(tables.events, ES.EVENT_SCHEMA, "events")]
    self._side = {name: _as_table(getattr(tables, name), _SIDE_SCHEMAS[name], name)
                  for name in _SIDE_KEYS}
    self.version = 0
    self.repeated = 0  # appended event rows dropped as repeats of a row already held

  def append(self, events=None, **side) -> None:
    """Appends event rows and side rows (keyword = users, authors, lives or videos)."""
    unknown = sorted(set(side) - set(_SIDE_KEYS))
    if unknown:
      raise ValueError(f"EventBuffer.append: unknown side table(s) {unknown}; expected "
                       f"{sorted(_SIDE_KEYS)}")
    if events is not None:
      new = _as_table(events, ES.EVENT_SCHEMA, "appended events")
      fresh = self._unseen(new)
      self.repeated += new.num_rows - fresh.num_rows
      if fresh.num_rows:
        self._events.append(fresh)
    for name, rows in side.items():
      both = pa.concat_tables([self._side[name], _as_table(rows, _SIDE_SCHEMAS[name], name)])
      ids = both[_SIDE_KEYS[name]].to_numpy()
      _, last = np.unique(ids[::-1], return_index=True)  # the latest row of every id
      self._side[name] = both.take(np.sort(len(ids) - 1 - last))
    self.version += 1

  def _unseen(self, new: pa.Table) -> pa.Table:
    """``new`` without the rows equal in every column to a held row or to an earlier row of
    ``new`` (in its order). Only held rows at or after ``new``'s first time can be equal."""
    if not new.num_rows:
      return new
    keys = ES.EVENT_SCHEMA.names
    new = new.append_column("__row__", pa.array(np.arange(new.num_rows)))
    firsts = new.group_by(keys, use_threads=False).aggregate([("__row__", "min")])
    new = new.take(np.sort(firsts.column("__row___min").to_numpy()))
    lo = int(pc.min(new["ts_ms"]).as_py())
    held = [t.filter(pc.greater_equal(t["ts_ms"], lo)) for t in self._events]
    held = pa.concat_tables(held) if held else None
    if held is not None and held.num_rows:
      new = new.join(held, keys=keys, join_type="left anti", use_threads=False)
      new = new.take(pc.sort_indices(new["__row__"]))
    return new.drop_columns(["__row__"]).cast(ES.EVENT_SCHEMA)

  @property
  def num_events(self) -> int:
    return sum(len(t) for t in self._events)

  def tables(self) -> LogTables:
    """The buffer as one in-memory log."""
    if len(self._events) > 1:
      self._events = [pa.concat_tables(self._events).combine_chunks()]
    return LogTables(events=self._events[0], **self._side)


class RequestBuilder:
  """(user, ts_ms, candidate lives) -> the model's padded input batch (see the module doc).

  Args:
    source: a log folder, ``LogTables``, a mapping of tables, or an ``EventBuffer``.
    cfg: the run's Moment settings (history lengths ``sv_hist_len`` / ``lv_hist_len``, the
      padded widths the model was trained with).
  """

  def __init__(self, source, cfg: MomentConfig):
    self.cfg = cfg
    self.buffer = source if isinstance(source, EventBuffer) else None
    # a ``mcjax.stream.engine.StreamEngine``: requests read its live state (no rebuild of a log)
    self.engine = source if hasattr(source, "live_context") else None
    if self.engine is not None:
      self._ctx, self._version = None, None
    elif self.buffer is None:
      if isinstance(source, (str, os.PathLike)) and not os.path.isdir(source):
        raise FileNotFoundError(f"event log folder {os.fspath(source)!r} does not exist")
      self._set(Context(load_log(source)), None)
    else:
      self._ctx, self._version = None, None

  def _set(self, ctx: Context, version, time_range=None) -> None:
    self._ctx, self._version = ctx, version
    ts = ctx.log.ts if time_range is None else ()
    self.time_range = time_range or (
        (int(ts.min()), int(ts.max())) if len(ts) else (0, -1))

  @property
  def context(self) -> Context:
    """The engine context over the source's events (rebuilt after a buffer append)."""
    if self.buffer is not None and self._version != self.buffer.version:
      self._set(Context(load_log(self.buffer.tables())), self.buffer.version)
    if self.engine is not None and self._version != self.engine.version:
      self._set(self.engine.live_context(), self.engine.version,
                (self.engine.first_ts, self.engine.max_ts))
    return self._ctx

  def features(self, user_id, ts_ms, live_ids) -> dict:
    """The materialised sample table (model inputs only) of the requests; arguments are
    broadcast against each other (one user and time, many lives; or one row per candidate)."""
    user, q, live = (np.ascontiguousarray(a) for a in np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, np.int64)) for a in (user_id, ts_ms, live_ids))))
    ctx = self.context
    parts = ctx.request_features(user, live, ctx.author_of(live), q, self.cfg)
    return {k: np.asarray(v).astype(SS.FIELD[k].dtype, copy=False) if k in SS.FIELD else v
            for k, v in parts.items()}

  def batch(self, user_id, ts_ms, live_ids) -> dict:
    """The requests' model inputs as the device receives them: histories padded to the
    run's lengths, ids folded and times wrapped to int32 (``host_batch``), exactly the
    fields ``schema.MODEL_INPUTS``."""
    padded = batch_lib.pad_table(self.features(user_id, ts_ms, live_ids),
                                self.cfg.sv_hist_len, self.cfg.lv_hist_len)
    device = host_batch(padded)
    return {name: device[name] for name in SS.MODEL_INPUTS}

  def outside(self, ts_ms) -> tuple[int, int]:
    """How many of ``ts_ms`` lie before the log's first event and after its last one."""
    ts = np.asarray(ts_ms, np.int64)
    self.context  # noqa: B018 (refreshes time_range after a buffer append)
    lo, hi = self.time_range
    return int((ts < lo).sum()), int((ts > hi).sum())

  def unseen(self, user_id, live_ids) -> dict:
    """{"users", "lives"}: distinct ids that neither their side table nor any exposure in
    the log knows (scored all the same, with hashed ids and side features -1)."""
    users, lives = (np.unique(np.asarray(a, np.int64)) for a in (user_id, live_ids))
    return {"users": int((~self.context.known_users(users)).sum()),
            "lives": int((~self.context.known_lives(lives)).sum())}
