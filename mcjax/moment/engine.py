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
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from mcjax.eventlog import schema as S
from mcjax.moment import windows
from mcjax.moment.config import MomentConfig
from mcjax.moment.crowd import CrowdIndex
from mcjax.moment.events import NEVER, Log, load_log
from mcjax.moment.history import LiveHistory, ShortVideoHistory
from mcjax.samples import schema as SS

HOUR_MS = 3_600_000
_EC = S.EVENT_CODE


class _Context:
  """The live exposures of a log with their side features and feature indexes."""

  def __init__(self, log: Log):
    ex = log.exposures
    live = np.flatnonzero(ex.domain == S.DOMAIN_CODE[S.LIVE])
    self.n = len(live)
    local = np.full(len(ex), -1, np.int64)
    local[live] = np.arange(self.n)
    self.exposure_id, self.exposure_ts = ex.exposure_id[live], ex.ts[live]
    self.user, self.live_id, self.author_id = ex.user[live], ex.item[live], ex.author[live]
    self.side = {
        "user_age": log.users.get("age_bucket", self.user, -1),
        "user_gender": log.users.get("gender", self.user, -1),
        "user_activity": log.users.get("activity_bucket", self.user, -1),
        "live_category": log.lives.get("category", self.live_id, -1),
        "author_fans_bucket": log.authors.get("fans_bucket", self.author_id, -1),
    }
    self.live_start = self._live_start(log)
    self.stats = {
        "unknown_users": int((log.users.rows(self.user) < 0).sum()),
        "unknown_lives": int((log.lives.rows(self.live_id) < 0).sum()),
        "unknown_authors": int((log.authors.rows(self.author_id) < 0).sum()),
    }
    # Events of live exposures, with the exposure's local row.
    on_live = local[log.xi] >= 0
    self.group = local[log.xi[on_live]]
    self.ts, self.code = log.ts[on_live], log.code[on_live]
    self.value = log.value[on_live]
    first = ex.first[live]
    click, watch = first[:, _EC[S.CLICK]], first[:, _EC[S.WATCH_END]]
    clicked = click != NEVER
    leaves = clicked & (watch != NEVER)
    self.crowd = CrowdIndex(
        self.live_id[self.group], self.ts, self.code, self.value,
        enter_live=self.live_id[clicked], enter_ts=click[clicked],
        leave_live=self.live_id[leaves], leave_ts=np.maximum(watch, click)[leaves])
    self.lv = LiveHistory(
        self.user, self.exposure_ts, self.live_id, self.author_id,
        self.side["live_category"], watch, ex.watch_value[live],
        {name: first[:, _EC[name]] for name in SS.LIVE_ACTION_BITS})
    self.sv = self._short_video_history(log)

  def _live_start(self, log: Log) -> np.ndarray:
    """lives.start_ms; for lives missing there, their first exposure in the log."""
    rows = log.lives.rows(self.live_id)
    ids, inverse = np.unique(self.live_id, return_inverse=True)
    earliest = np.full(len(ids), NEVER, np.int64)
    np.minimum.at(earliest, inverse, self.exposure_ts)
    return np.where(rows >= 0, log.lives.columns["start_ms"][np.maximum(rows, 0)],
                    earliest[inverse])

  def _short_video_history(self, log: Log) -> ShortVideoHistory:
    ex = log.exposures
    play = np.flatnonzero(log.code == _EC[S.PLAY_END])
    xi = log.xi[play]
    item = ex.item[xi]
    rows = log.videos.rows(item)
    known = rows >= 0
    rows = np.maximum(rows, 0)
    video = log.videos.columns
    self.stats["unknown_videos"] = int((~known).sum())
    return ShortVideoHistory(
        ex.user[xi], log.ts[play], item,
        np.where(known, video["author_id"][rows], ex.author[xi]),
        np.where(known, video["category"][rows], -1), np.where(known, video["tag"][rows], -1),
        log.value[play], ex.first[xi, _EC[S.LIKE]], ex.first[xi, _EC[S.FOLLOW]])

  def features(self, x: np.ndarray, q: np.ndarray, cfg: MomentConfig) -> dict:
    """Features of live exposures ``x`` at query times ``q`` (events with ts < q)."""
    out = {"user_id": self.user[x], "live_id": self.live_id[x], "author_id": self.author_id[x],
           "hour_of_day": (q // HOUR_MS) % 24}
    out |= {name: values[x] for name, values in self.side.items()}
    out["crowd"] = self.crowd.features(self.live_id[x], q, self.live_start[x])
    out |= self.sv.snapshot(self.user[x], q, cfg.sv_hist_len)
    out |= self.lv.snapshot(self.user[x], q, cfg.lv_hist_len, current=x)
    return out


def take_rows(table: dict, idx: np.ndarray) -> dict:
  """Rows ``idx`` of a columnar sample table (or feature dict), sequences included."""
  out = {}
  for name, values in table.items():
    if name not in SS.SEQUENCE_FIELDS and name not in SS.OFFSETS.values():
      out[name] = values[idx]
  for prefix, key in SS.OFFSETS.items():
    if key not in table:
      continue
    offsets = table[key]
    lengths = np.diff(offsets)[idx]
    new = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(lengths, out=new[1:])
    flat = np.repeat(offsets[idx] - new[:-1], lengths) + np.arange(new[-1])
    out[key] = new
    for name in (SS.SV_FIELDS if prefix == "sv" else SS.LV_FIELDS):
      out[name] = table[name][flat]
  return out


def _sort(rows: dict, exposure_id: np.ndarray) -> dict:
  order = np.lexsort((rows["kind"], exposure_id[rows["x"]], rows["sample_ts_ms"]))
  return {k: v[order] for k, v in rows.items()}


def _oracle(log: Log, exposure_id: np.ndarray, is_eval: bool) -> dict:
  n = len(exposure_id)
  out = {"in_highlight": np.full(n, -1, np.int32)}
  out |= {name: np.full(n, np.nan, np.float32)
          for name in ("oracle_p_click", "oracle_p_no_highlight", "oracle_p_no_affinity")}
  if is_eval and log.oracle is not None:
    rows = log.oracle.rows(exposure_id)
    hit = rows >= 0
    columns = log.oracle.columns
    out["in_highlight"][hit] = columns["in_highlight"][rows[hit]]
    for name, column in (("oracle_p_click", "p_click"),
                         ("oracle_p_no_highlight", "p_click_no_highlight"),
                         ("oracle_p_no_affinity", "p_click_no_affinity")):
      out[name][hit] = columns[column][rows[hit]]
  return out


def _table(ctx: _Context, log: Log, rows: dict, features: dict, is_eval: bool) -> dict:
  x = rows["x"]
  parts = {**features, **{k: v for k, v in rows.items() if k != "x"},
           "exposure_id": ctx.exposure_id[x], "exposure_ts_ms": ctx.exposure_ts[x],
           **_oracle(log, ctx.exposure_id[x], is_eval)}
  table = {f.name: np.asarray(parts[f.name]).astype(f.dtype, copy=False) for f in SS.FIELDS}
  table |= {key: parts[key] for key in SS.OFFSETS.values()}
  return table


def build_samples(log_dir_or_tables, cfg: MomentConfig) -> dict:
  """Builds the training samples and evaluation records of a log.

  Args:
    log_dir_or_tables: a log folder, a ``events.LogTables`` or a mapping of pyarrow tables
      (``events``, ``users``, ``authors``, ``lives``, ``videos``, optional
      ``oracle_exposures``; the folder's file names work as keys too).
    cfg: the engine settings (validated here).

  Returns:
    {"train": sample table, "eval": sample table, "stats": dict}; sample tables are columnar
    (see ``mcjax.samples.schema``), sorted by (sample_ts_ms, exposure_id, kind). stats holds
    the counts per kind and of dropped or ignored events.
  """
  cfg.validate()
  start = time.perf_counter()
  log = load_log(log_dir_or_tables)
  ctx = _Context(log)
  labels = windows.label_times(ctx.group, ctx.ts, ctx.code, ctx.exposure_ts, cfg)
  train_rows, mode_stats = windows.emit_samples(labels, cfg)
  train_rows = _sort(train_rows, ctx.exposure_id)
  eval_rows = _sort(windows.eval_rows(labels), ctx.exposure_id)

  at_exposure = ctx.features(np.arange(ctx.n), ctx.exposure_ts, cfg)
  if cfg.features_at == "exposure":
    train_features = take_rows(at_exposure, train_rows["x"])
  else:
    train_features = ctx.features(train_rows["x"], train_rows["sample_ts_ms"], cfg)
  train = _table(ctx, log, train_rows, train_features, is_eval=False)
  evals = _table(ctx, log, eval_rows, take_rows(at_exposure, eval_rows["x"]), is_eval=True)

  kinds = train["kind"]
  stats = {"live_exposures": ctx.n, "train_samples": int(len(kinds)),
           "eval_records": int(len(evals["kind"])),
           "samples": {SS.KIND_NAMES[k]: int((kinds == k).sum())
                       for k in SS.KIND_NAMES if k != SS.EVAL},
           **log.stats, **ctx.stats, **labels.stats, **mode_stats}
  stats["build_seconds"] = time.perf_counter() - start
  if stats["late_clicks"]:
    logging.warning("%d click(s) came after no_click_close_s=%s and were ignored; raise "
                    "no_click_close_s above the click delay", stats["late_clicks"],
                    cfg.no_click_close_s)
  return {"train": train, "eval": evals, "stats": stats}
