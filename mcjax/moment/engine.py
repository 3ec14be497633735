"""``build_samples``: an event log -> Moment training samples and evaluation records.

The engine loads the log (``events``), derives each live exposure's label fire and close times
and cuts them into training rows of the configured mode (``windows``), then attaches the
features of every row at its query time q (``crowd``, ``history``, side tables):

* q = the exposure time when ``features_at="exposure"`` (default: the request-time view, the
  same as the evaluation record's; the user's own click never leaks into the crowd counts,
  and training matches serving), q = the sample time when ``features_at="sample"``.
* Features use only events with ts < q. Ids and side features: user_age/gender/activity
  (users), live_category (lives), author_fans_bucket (authors), hour_of_day of q (UTC);
  ids missing from a side table get -1 (counted in stats).

Evaluation records: one per live exposure, kind EVAL, sample_ts = exposure time, features at
the exposure time whatever ``features_at``, final labels with mask 1, and the oracle fields from
``_oracle/exposures.parquet`` when the log has one (else -1 / NaN, as for training samples).
They do not depend on the mode. Both tables are sorted by (sample_ts_ms, exposure_id, kind).

``SampleBuilder`` does the same in bounded memory: it labels every exposure up front and
attaches features to consecutive chunks of rows (the histories dominate the tables' size).

``Context(load_log(...)).request_features(user, live, author, q, cfg)`` computes the same
model inputs for any request, logged or not: the scorer (``mcjax.serve``) builds its candidates'
features with it, so training, evaluation and serving share one feature implementation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from absl import logging

from mcjax.eventlog import schema as S
from mcjax.moment import windows
from mcjax.moment.config import MomentConfig
from mcjax.moment import crowd
from mcjax.moment.crowd import CrowdIndex
from mcjax.moment.events import NEVER, Log, gather, load_log
from mcjax.moment.history import (LiveHistory, ShortVideoHistory, live_action_ts,
                                  short_video_plays)
from mcjax.contract import schema as SS

HOUR_MS = 3_600_000
_EC = S.EVENT_CODE
# Side features: sample field -> (side table, its column); -1 where the id is not in the table.
SIDE_FIELDS = {"user_age": ("users", "age_bucket"), "user_gender": ("users", "gender"),
               "user_activity": ("users", "activity_bucket"),
               "live_category": ("lives", "category"),
               "author_fans_bucket": ("authors", "fans_bucket")}


def side_fields(table: str, lookup, ids: np.ndarray) -> dict:
  """The ``SIDE_FIELDS`` taken from side table ``table`` (an ``events.Lookup``) for ``ids``."""
  return {field: lookup.get(column, ids, -1)
          for field, (name, column) in SIDE_FIELDS.items() if name == table}


def time_fields(q: np.ndarray) -> dict:
  """The fields of a query time: query_ts_ms and hour_of_day (UTC)."""
  return {"hour_of_day": (q // HOUR_MS) % 24, "query_ts_ms": q}


def live_exposures(exposures, xi: np.ndarray):
  """The live exposures of organized events (``events.organize``): ``(live, local, on_live)``
  = their rows in ``exposures``, each exposure's row among them (-1: not a live exposure),
  and which events (by their exposure index ``xi``) belong to a live exposure."""
  live = np.flatnonzero(exposures.domain == S.DOMAIN_CODE[S.LIVE])
  local = np.full(len(exposures), -1, np.int64)
  local[live] = np.arange(len(live))
  return live, local, local[xi] >= 0


def query_times(rows: dict, exposure_ts: np.ndarray, cfg: MomentConfig,
                is_eval: bool) -> np.ndarray:
  """The query time q of each sample row (``rows["x"]``: its live exposure): the sample's own
  time for training rows when ``cfg.features_at == "sample"``, else its exposure's time
  (evaluation records always)."""
  at_sample = not is_eval and cfg.features_at == "sample"
  return rows["sample_ts_ms"] if at_sample else exposure_ts[rows["x"]]


class Context:
  """A log's live exposures and the indexes every model input is computed from.

  ``request_features(user, live, author, q, cfg)`` gives the model inputs of any requests
  (user, live, author, query time q) from the log's events with ts < q: the engine calls it
  for logged exposures (``features``), the scorer (``mcjax.serve``) for candidate lives at a
  request's time. One implementation of the side, crowd and history features serves both.
  """

  def __init__(self, log: Log):
    self.log = log
    ex = log.exposures
    live, local, on_live = live_exposures(ex, log.xi)
    self.n = len(live)
    self.exposure_id, self.exposure_ts = ex.exposure_id[live], ex.ts[live]
    self.user, self.live_id, self.author_id = ex.user[live], ex.item[live], ex.author[live]
    self._index_lives()
    self.stats = {
        "unknown_users": int((log.users.rows(self.user) < 0).sum()),
        "unknown_lives": int((log.lives.rows(self.live_id) < 0).sum()),
        "unknown_authors": int((log.authors.rows(self.author_id) < 0).sum()),
    }
    # Events of live exposures, with the exposure's local row.
    self.group = local[log.xi[on_live]]
    self.ts, self.code = log.ts[on_live], log.code[on_live]
    self.value = log.value[on_live]
    first = ex.first[live]
    click, watch = first[:, _EC[S.CLICK]], first[:, _EC[S.WATCH_END]]
    self.crowd = CrowdIndex(self.live_id[self.group], self.ts, self.code, self.value,
                            **crowd.viewer_times(self.live_id, click, watch))
    self.lv = LiveHistory(
        self.user, self.exposure_ts, self.live_id, self.author_id,
        log.lives.get("category", self.live_id, -1), watch, ex.watch_value[live],
        live_action_ts(first))
    self.sv = self._short_video_history(log)

  def _index_lives(self) -> None:
    """Per live id with an exposure in the log: its first exposure time and the author of its
    latest exposure (for lives missing from lives.parquet); the ids of all exposed users."""
    ids, inverse = np.unique(self.live_id, return_inverse=True)
    self._exposed_lives = ids
    self._first_exposure = np.full(len(ids), NEVER, np.int64)
    np.minimum.at(self._first_exposure, inverse, self.exposure_ts)
    last = np.lexsort((self.exposure_ts, inverse))  # by live, then time: a group's last row
    ends = np.flatnonzero(np.r_[inverse[last][1:] != inverse[last][:-1], True])
    self._last_author = self.author_id[last[ends]]
    self._exposed_users = np.unique(self.log.exposures.user)

  def side_features(self, user: np.ndarray, live: np.ndarray, author: np.ndarray) -> dict:
    """user_age/gender/activity (users), live_category (lives), author_fans_bucket (authors);
    -1 where the side table lacks the id."""
    return (side_fields("users", self.log.users, user)
            | side_fields("lives", self.log.lives, live)
            | side_fields("authors", self.log.authors, author))

  def live_start(self, live: np.ndarray, q: np.ndarray) -> np.ndarray:
    """lives.start_ms; for lives missing there, their first exposure in the log if it is not
    after q, else q (a logged exposure's own live always has one)."""
    rows = self.log.lives.rows(live)
    first = np.minimum(_lookup(self._exposed_lives, self._first_exposure, live, NEVER), q)
    return np.where(rows >= 0, gather(self.log.lives.columns["start_ms"], rows, 0), first)

  def author_of(self, live: np.ndarray) -> np.ndarray:
    """A live's author: lives.author_id; else the author of its latest exposure in the log;
    else -1."""
    rows = self.log.lives.rows(live)
    logged = _lookup(self._exposed_lives, self._last_author, live, -1)
    return np.where(rows >= 0, gather(self.log.lives.columns["author_id"], rows, 0), logged)

  def known_users(self, user: np.ndarray) -> np.ndarray:
    """Whether each user id is in users.parquet or has an exposure (either domain) in the log."""
    logged = _lookup(self._exposed_users, np.ones(len(self._exposed_users), bool), user, False)
    return (self.log.users.rows(user) >= 0) | logged

  def known_lives(self, live: np.ndarray) -> np.ndarray:
    """Whether each live id is in lives.parquet or has an exposure in the log."""
    logged = _lookup(self._exposed_lives, np.ones(len(self._exposed_lives), bool), live, False)
    return (self.log.lives.rows(live) >= 0) | logged

  def _short_video_history(self, log: Log) -> ShortVideoHistory:
    """The plays: short-video watch_end events (``history.short_video_plays``)."""
    ex = log.exposures
    play = np.flatnonzero((log.code == _EC[S.WATCH_END])
                          & (ex.domain[log.xi] == S.DOMAIN_CODE[S.SHORT_VIDEO]))
    xi = log.xi[play]
    plays, stats = short_video_plays(
        ex.user[xi], log.ts[play], ex.item[xi], ex.author[xi], log.value[play],
        ex.first[xi, _EC[S.LIKE]], ex.first[xi, _EC[S.FOLLOW]], log.videos)
    self.stats.update(stats)
    return ShortVideoHistory(**plays)

  def request_features(self, user: np.ndarray, live: np.ndarray, author: np.ndarray,
                       q: np.ndarray, cfg: MomentConfig, *, stored: bool = False,
                       exclude: np.ndarray | None = None) -> dict:
    """The model inputs of requests (user, live, author, query time q), int64 arrays of one
    length: ids, side features, hour_of_day and query_ts_ms, the live's crowd features and the
    user's histories (at most ``cfg.sv_hist_len`` / ``cfg.lv_hist_len`` items), all from
    events with ts < q. Histories are references into ``history`` when ``stored``, else
    materialised (flat sequences plus ``sv_offsets`` / ``lv_offsets``); ``exclude``: the live
    exposure row to leave out of each live history (-1 or None: none).
    """
    user, live, author, q = (np.asarray(a, np.int64) for a in (user, live, author, q))
    out = {"user_id": user, "live_id": live, "author_id": author,
           **time_fields(q)}
    out |= self.side_features(user, live, author)
    out["crowd"] = self.crowd.features(live, q, self.live_start(live, q))
    for hist, refs in ((self.sv, self.sv.refs(user, q, cfg.sv_hist_len)),
                       (self.lv, self.lv.refs(user, q, cfg.lv_hist_len, exclude=exclude))):
      out |= refs if stored else hist.snapshot(refs, q)
    return out

  def features(self, x: np.ndarray, q: np.ndarray, cfg: MomentConfig,
               stored: bool = False) -> dict:
    """``request_features`` of live exposures ``x`` (rows of this context) at query times
    ``q``, leaving each exposure itself out of its live history."""
    return self.request_features(self.user[x], self.live_id[x], self.author_id[x], q, cfg,
                                 stored=stored, exclude=x)

  @property
  def history(self) -> dict:
    """{"sv": HistoryStore, "lv": HistoryStore}: what stored samples point into."""
    return {"sv": self.sv.store, "lv": self.lv.store}


def _lookup(sorted_ids: np.ndarray, values: np.ndarray, keys, default) -> np.ndarray:
  """``values[i]`` for each key equal to ``sorted_ids[i]``, else ``default``."""
  keys = np.asarray(keys, np.int64)
  out = np.full(keys.shape, default, values.dtype)
  if len(sorted_ids):
    pos = np.minimum(np.searchsorted(sorted_ids, keys), len(sorted_ids) - 1)
    hit = sorted_ids[pos] == keys
    out[hit] = values[pos[hit]]
  return out


def _sort(rows: dict, exposure_id: np.ndarray) -> dict:
  order = np.lexsort((rows["kind"], exposure_id[rows["x"]], rows["sample_ts_ms"]))
  return {k: v[order] for k, v in rows.items()}


def oracle_fields(oracle, exposure_id: np.ndarray, is_eval: bool) -> dict:
  """The oracle fields of rows: from ``oracle`` (an ``events.Lookup`` of
  _oracle/exposures.parquet, or None) for evaluation records, else -1 / NaN."""
  n = len(exposure_id)
  out = {"in_highlight": np.full(n, -1, np.int32)}
  out |= {name: np.full(n, np.nan, np.float32)
          for name in ("oracle_p_click", "oracle_p_no_highlight", "oracle_p_no_affinity")}
  if is_eval and oracle is not None:
    rows = oracle.rows(exposure_id)
    hit = rows >= 0
    columns = oracle.columns
    out["in_highlight"][hit] = columns["in_highlight"][rows[hit]]
    for name, column in (("oracle_p_click", "p_click"),
                         ("oracle_p_no_highlight", "p_click_no_highlight"),
                         ("oracle_p_no_affinity", "p_click_no_affinity")):
      out[name][hit] = columns[column][rows[hit]]
  return out


class SampleBuilder:
  """The labelled rows of a log; features are attached chunk by chunk (bounded memory).

  ``SampleBuilder(log, cfg).tables("train", chunk_rows=100_000)`` yields consecutive sorted
  sample tables of at most ``chunk_rows`` rows; ``build_samples`` takes each split whole.
  """

  def __init__(self, log_dir_or_tables, cfg: MomentConfig):
    self.cfg = cfg.validate()
    self.log = load_log(log_dir_or_tables)
    self.ctx = Context(self.log)
    ctx = self.ctx
    labels = windows.label_times(ctx.group, ctx.ts, ctx.code, ctx.exposure_ts, cfg)
    train, mode_stats = windows.emit_samples(labels, cfg)
    self.rows = {"train": _sort(train, ctx.exposure_id),
                 "eval": _sort(windows.eval_rows(labels), ctx.exposure_id)}
    kinds = self.rows["train"]["kind"]
    self.stats = {"live_exposures": ctx.n, "train_samples": int(len(kinds)),
                  "eval_records": ctx.n,
                  "samples": {SS.KIND_NAMES[k]: int((kinds == k).sum())
                              for k in SS.KIND_NAMES if k != SS.EVAL},
                  **self.log.stats, **ctx.stats, **labels.stats, **mode_stats}
    if self.stats["late_clicks"]:
      logging.warning("%d click(s) came after no_click_close_s=%s and were ignored; raise "
                      "no_click_close_s above the click delay", self.stats["late_clicks"],
                      cfg.no_click_close_s)

  def num_rows(self, split: str) -> int:
    return len(self._split(split)["x"])

  def _split(self, split: str) -> dict:
    if split not in self.rows:
      raise ValueError(f"split={split!r}: expected one of {sorted(self.rows)}")
    return self.rows[split]

  @property
  def history(self) -> dict:
    """The history stores that ``tables(..., stored=True)`` point into."""
    return self.ctx.history

  def tables(self, split: str, chunk_rows: int | None = None,
             stored: bool = False) -> Iterator[dict]:
    """Sorted sample tables of ``split`` ("train" or "eval"), ``chunk_rows`` rows at most.

    ``stored``: yield stored tables (``schema.STORED_FIELDS``: histories as references into
    ``self.history``) instead of materialised sample tables.
    """
    rows = self._split(split)
    n = len(rows["x"])
    if chunk_rows is not None and chunk_rows < 1:
      raise ValueError(f"chunk_rows={chunk_rows}: expected a positive number of rows")
    step = max(chunk_rows or n, 1)
    for lo in range(0, max(n, 1), step):
      yield self._table({k: v[lo:lo + step] for k, v in rows.items()}, split == "eval", stored)

  def _table(self, rows: dict, is_eval: bool, stored: bool) -> dict:
    ctx, x = self.ctx, rows["x"]
    q = query_times(rows, ctx.exposure_ts, self.cfg, is_eval)
    parts = {**ctx.features(x, q, self.cfg, stored),
             **{k: v for k, v in rows.items() if k != "x"},
             "exposure_id": ctx.exposure_id[x], "exposure_ts_ms": ctx.exposure_ts[x],
             **oracle_fields(self.log.oracle, ctx.exposure_id[x], is_eval)}
    return assemble(parts, stored)


def assemble(parts: dict, stored: bool) -> dict:
  """The schema's fields of ``parts`` in their dtypes: a stored table (``STORED_FIELDS``) or a
  sample table (``FIELDS`` and the offsets)."""
  fields = SS.STORED_FIELDS if stored else SS.FIELDS
  table = {f.name: np.asarray(parts[f.name]).astype(f.dtype, copy=False) for f in fields}
  return table if stored else table | {key: parts[key] for key in SS.OFFSETS.values()}


def build_samples(log_dir_or_tables, cfg: MomentConfig) -> dict:
  """Builds the training samples and evaluation records of a log.

  Args:
    log_dir_or_tables: a log folder, a ``events.LogTables`` or a mapping of pyarrow tables
      (``events``, ``users``, ``authors``, ``lives``, ``videos``, optional
      ``oracle_exposures``; the folder's file names work as keys too).
    cfg: the engine settings (validated here).

  Returns:
    {"train": sample table, "eval": sample table, "stats": dict}; sample tables are columnar
    (see ``mcjax.contract.schema``), sorted by (sample_ts_ms, exposure_id, kind). stats holds
    the counts per kind and of dropped or ignored events, and ``build_seconds``.
  """
  start = time.perf_counter()
  builder = SampleBuilder(log_dir_or_tables, cfg)
  out = {split: next(builder.tables(split)) for split in ("train", "eval")}
  return out | {"stats": builder.stats | {"build_seconds": time.perf_counter() - start}}
