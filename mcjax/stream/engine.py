"""The incremental Moment engine: event rows in, training samples and evaluation records out.

``StreamEngine(cfg).push(batch)`` applies a ``source.Batch`` and returns the samples that
became final; ``finish()`` (a bounded source ran out) returns the rest. For an in-order
replay of a log the samples, concatenated, are exactly ``build_samples``' tables, field by
field and in its order (sorted by (sample_ts_ms, exposure_id, kind)).

Time. ``complete``, the watermark, is the largest event time seen less
``StreamConfig.allowed_lateness_s``: every event with ts < complete has arrived. A later
event with ts < complete is late: refused to the dead-letter file, never merged.

One implementation of the rules. Nothing here restates a label, window or feature rule:

* Labels: an open exposure's labels are recomputed from its events so far by
  ``moment.windows.label_times`` and cut by ``windows.emit_samples`` (the batch functions).
  A row of that provisional output with sample_ts < complete is final (its fires and close
  lie before complete, and later events cannot move them), so it is emitted once, when the
  watermark passes it. REALTIME samples leave at their window end, CLOSE samples at the close,
  FAST/SLOW at their times.
* Features: once the watermark reaches an exposure's time E, its features at E are computed
  by ``moment.engine.Context.request_features`` over the carried state
  (``state.StateContext``) and kept until its last sample leaves; with
  ``features_at="sample"`` training samples get theirs at their own time, when they leave.
* Evaluation records (sample_ts = E, final labels) are made when the exposure closes and
  leave in (E, exposure_id) order once no open exposure is older.
* Requests (``requests=True``): the moment an exposure's features at E are computed, its
  evaluation record's model inputs leave as a "request" (labels and masks 0: not known yet):
  what a serving request at E sees, available at E, before any of the exposure's training
  samples (their times are after E). The real-time loop scores requests and joins the labels
  of the evaluation record when the exposure closes (``mcjax.train.emitted.StreamEmitted``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mcjax.contract import schema as SS
from mcjax.eventlog import schema as S
from mcjax.moment import crowd as crowd_lib
from mcjax.moment import windows
from mcjax.moment.config import MomentConfig, seconds_to_ms
from mcjax.moment.engine import assemble, oracle_fields
from mcjax.moment.events import NEVER, event_columns
from mcjax.stream import rows as rows_lib
from mcjax.stream.columns import ragged_concat, ragged_take
from mcjax.stream.source import Batch
from mcjax.stream.state import BEFORE, LIVE, StreamState


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Settings of the stream engine (times in seconds of event time)."""
  allowed_lateness_s: float = 0.0
  exposure_ttl_s: float = 7500.0   # an exposure's events are taken this long after it
  prune_every_s: float = 300.0     # evict closed state each time the watermark moves this far

  def validate(self) -> "StreamConfig":
    for name in ("allowed_lateness_s", "exposure_ttl_s", "prune_every_s"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and value >= 0):
        raise ValueError(f"StreamConfig.{name}={value!r}: expected a number >= 0 (seconds)")
    return self


class StreamEngine:
  """See the module docstring. ``side``: initial side tables (by name or file name);
  ``oracle``: an ``events.Lookup`` of ``_oracle/exposures.parquet`` for evaluation records;
  ``requests``: also emit each exposure's request at E (module docstring)."""

  def __init__(self, cfg: MomentConfig, stream_cfg: StreamConfig | None = None, *,
               side: dict | None = None, oracle=None,
               dead: rows_lib.DeadLetters | None = None, requests: bool = False):
    self.cfg = cfg.validate()
    self.scfg = (stream_cfg or StreamConfig()).validate()
    if self.cfg.max_watch_s + 300 > self.scfg.exposure_ttl_s:
      raise ValueError(f"StreamConfig.exposure_ttl_s={self.scfg.exposure_ttl_s} must be at "
                       f"least max_watch_s + 300 = {self.cfg.max_watch_s + 300}")
    self.state = StreamState(side, sv_keep=cfg.sv_hist_len + 1, lv_keep=cfg.lv_hist_len + 1,
                             ttl_ms=seconds_to_ms(self.scfg.exposure_ttl_s))
    self.oracle = oracle
    self.requests = requests
    self.dead = dead or rows_lib.DeadLetters(None)
    self.complete = int(BEFORE)
    self.max_ts = int(BEFORE)
    self.first_ts = None  # the first event's time
    self.last_key = None
    self.pruned_at = None  # the watermark of the last eviction
    self.feats = None      # features at exposure time; x.feat_row indexes it
    self.eval_buffer = []  # evaluation records waiting for older exposures to close
    self.counts = {"events_in": 0, "train": 0, "eval": 0, "request": 0}
    self._side_version = 0

  def __getstate__(self):
    state = dict(self.__dict__)
    state["dead"] = dict(self.dead.counts)
    return state

  def __setstate__(self, state):
    counts = state.pop("dead")
    self.__dict__.update(state)
    self.dead = rows_lib.DeadLetters(None)
    self.dead.counts = counts

  # ------------------------------------------------------------------ input

  def push(self, batch: Batch) -> dict:
    """Applies ``batch``; returns {"train": table or None, "eval": table or None}, the
    materialised sample tables (``moment.engine.assemble``) that became final (and
    "request", with ``requests``)."""
    for offset, reason in batch.dead:
      self.dead.add("undecodable", offset, reason, None)
    if batch.side:
      self.state.add_side(batch.side)
      self._side_version += 1
    table, offsets = batch.events, list(batch.offsets)
    self.counts["events_in"] += table.num_rows
    if table.num_rows:
      fresh = self._fresh(table, offsets)
      table, offsets = table.take(fresh), [offsets[i] for i in fresh]
      table, bad = rows_lib.split_malformed(table)
      if bad:
        rows = rows_lib.row_dicts(batch.events.take([int(fresh[i]) for i, _ in bad]),
                                  range(len(bad)))
        for (i, reason), row in zip(bad, rows):
          self.dead.add("malformed", offsets[i], reason, row)
        bad_rows = {i for i, _ in bad}
        offsets = [o for i, o in enumerate(offsets) if i not in bad_rows]
      if table.num_rows:
        self._take(table, offsets)
    return self._advance(self.complete)

  def finish(self) -> dict:
    """The end of a bounded stream: everything left becomes final."""
    return self._advance(NEVER)

  def _fresh(self, table, offsets: list[str]) -> np.ndarray:
    """Rows whose offset is after every applied one; the others are dead-lettered."""
    if self.last_key is None or len(self.last_key) == 1:
      try:  # a replay's row numbers: compared as one int64 array
        keys = np.asarray(offsets, dtype=np.int64) if offsets else np.zeros(0, np.int64)
      except (ValueError, OverflowError):
        keys = None
      if keys is not None:
        last = -1 if self.last_key is None else self.last_key[0]
        prior = np.maximum.accumulate(np.r_[last, keys])[:-1]
        fresh = keys > prior
        for i in np.flatnonzero(~fresh):
          self._duplicate(table, offsets, int(i))
        if len(keys):
          self.last_key = (int(max(last, keys.max())),)
        return np.flatnonzero(fresh)
    keep, last = [], self.last_key
    for i, key in enumerate(rows_lib.offset_keys(offsets)):
      if last is None or key > last:
        keep.append(i)
        last = key
      else:
        self._duplicate(table, offsets, i)
    self.last_key = last
    return np.asarray(keep, np.int64)

  def _duplicate(self, table, offsets: list[str], i: int) -> None:
    self.dead.add("duplicate", offsets[i], f"offset {offsets[i]} was already applied",
                  table.slice(i, 1).to_pylist()[0])

  def _take(self, table, offsets: list[str]) -> None:
    c = event_columns(table)
    late = c["ts"] < self.complete
    if late.any():
      idx = np.flatnonzero(late)
      for i, row in zip(idx, rows_lib.row_dicts(table, idx)):
        event = S.EVENTS[c["code"][i]]
        self.dead.add(f"late_{event}", offsets[i],
                      f"late: ts_ms {int(c['ts'][i])} is before the watermark "
                      f"{self.complete} (allowed_lateness_s={self.scfg.allowed_lateness_s})",
                      row)
      c = {k: v[~late] for k, v in c.items()}
    if len(c["ts"]):
      self.state.ingest(c)
      self.max_ts = max(self.max_ts, int(c["ts"].max()))
      if self.first_ts is None:
        self.first_ts = int(c["ts"].min())
      lateness = seconds_to_ms(self.scfg.allowed_lateness_s)
      self.complete = max(self.complete, self.max_ts - lateness)

  # ------------------------------------------------------------------ output

  def _advance(self, complete: int) -> dict:
    st, x, cfg = self.state, self.state.x, self.cfg
    live = x["domain"] == LIVE
    ctx = None
    ready = np.flatnonzero(live & ~x["featured"] & (x["ts"] <= complete))
    if len(ready):
      ctx = st.context()
      f = ctx.request_features(x["user"][ready], x["item"][ready], x["author"][ready],
                               x["ts"][ready], cfg, exclude=ctx.record_of(ready))
      base = 0 if self.feats is None else len(self.feats["query_ts_ms"])
      self.feats = f if self.feats is None else ragged_concat([self.feats, f])
      x["feat_row"][ready] = base + np.arange(len(ready))
      x["featured"][ready] = True
    out = {"train": None, "eval": None}
    if self.requests:
      out["request"] = self._requests(ready) if len(ready) else None
    due = np.flatnonzero(live & ~x["done"] & (x["touched"] | (x["next_due"] < complete)))
    if len(due):
      train, evals = self._labels(due, complete)
      if len(train["x"]):
        out["train"] = self._train_table(train, ctx)
      if len(evals["x"]):
        self.eval_buffer.append(self._table(evals, True, None))
    out["eval"] = self._release_evals(complete)
    for split in out:
      if out[split] is not None:
        self.counts[split] += len(out[split]["sample_ts_ms"])
    st.drop_pending(complete)
    every = seconds_to_ms(self.scfg.prune_every_s)
    if complete not in (NEVER, BEFORE) and (self.pruned_at is None
                                            or complete - self.pruned_at >= every):
      self._prune(complete)
    return out

  def _labels(self, due: np.ndarray, complete: int) -> tuple[dict, dict]:
    """Recomputes the labels of exposures ``due`` (x rows) from their events; returns the
    training rows that became final and the evaluation rows of those that closed."""
    st, x, cfg = self.state, self.state.x, self.cfg
    ids = x["exposure_id"][due]
    sid = np.argsort(ids)
    ev = st.events
    mine = np.flatnonzero(np.isin(ev["exposure_id"], ids))
    mine = mine[np.argsort(ev["ts"][mine], kind="stable")]
    group = sid[np.searchsorted(ids[sid], ev["exposure_id"][mine])]
    labels = windows.label_times(group, ev["ts"][mine], ev["code"][mine], x["ts"][due], cfg)
    rows, _ = windows.emit_samples(labels, cfg)
    ts = rows["sample_ts_ms"]
    final = (ts < complete) & (ts > x["emitted_until"][due][rows["x"]])
    pending = ts >= complete
    train = {k: v[final] for k, v in rows.items()}
    train["x"] = due[train["x"]]
    np.maximum.at(x["emitted_until"], train["x"], train["sample_ts_ms"])
    next_due = np.full(len(due), NEVER, np.int64)
    np.minimum.at(next_due, rows["x"][pending], ts[pending])
    closed = labels.close < complete
    next_due = np.where(closed, next_due, np.minimum(next_due, labels.close))
    x["next_due"][due] = next_due
    newly = closed & ~x["closed"][due]
    evals = windows.eval_rows(labels)
    evals = {k: v[newly[evals["x"]]] for k, v in evals.items()}
    evals["x"] = due[evals["x"]]
    x["closed"][due[newly]] = True
    x["done"][due[closed & (next_due == NEVER)]] = True
    x["touched"][due] = False
    return train, evals

  def _train_table(self, rows: dict, ctx) -> dict:
    if self.cfg.features_at == "sample":
      x = self.state.x
      ctx = ctx or self.state.context()
      xr = rows["x"]
      feats = ctx.request_features(x["user"][xr], x["item"][xr], x["author"][xr],
                                   rows["sample_ts_ms"], self.cfg,
                                   exclude=ctx.record_of(xr))
      return _sorted(self._table(rows, False, feats))
    return _sorted(self._table(rows, False, None))

  def _table(self, rows: dict, is_eval: bool, feats) -> dict:
    x = self.state.x
    xr = rows["x"]
    if feats is None:
      feats = ragged_take(self.feats, x["feat_row"][xr])
    ids = x["exposure_id"][xr]
    parts = {**feats, **{k: v for k, v in rows.items() if k != "x"},
             "exposure_id": ids, "exposure_ts_ms": x["ts"][xr],
             **oracle_fields(self.oracle, ids, is_eval)}
    return assemble(parts, stored=False)

  def _requests(self, ready: np.ndarray) -> dict:
    """The evaluation records of exposures ``ready`` (x rows, just featured), labels unknown."""
    n, t = len(ready), len(SS.TASKS)
    rows = {"x": ready, "sample_ts_ms": self.state.x["ts"][ready],
            "kind": np.full(n, SS.EVAL, np.int32), "labels": np.zeros((n, t), np.float32),
            "label_mask": np.zeros((n, t), np.float32)}
    return _sorted(self._table(rows, True, None))

  def _release_evals(self, complete: int):
    if not self.eval_buffer:
      return None
    x = self.state.x
    waiting = (x["domain"] == LIVE) & ~x["closed"]
    until = min(int(x["ts"][waiting].min()) if waiting.any() else NEVER, complete)
    buf = ragged_concat(self.eval_buffer) if len(self.eval_buffer) > 1 else self.eval_buffer[0]
    go = buf["sample_ts_ms"] < until
    if not go.any():
      self.eval_buffer = [buf]
      return None
    self.eval_buffer = [ragged_take(buf, np.flatnonzero(~go))] if not go.all() else []
    return _sorted(ragged_take(buf, np.flatnonzero(go)))

  def _prune(self, complete: int) -> None:
    st, x = self.state, self.state.x
    st.prune(complete, complete - crowd_lib.MAX_WINDOW_MS)
    x = st.x
    if self.feats is not None:
      need = x["featured"] & ~x["done"]
      rows = x["feat_row"][need]
      self.feats = ragged_take(self.feats, rows)
      x["feat_row"][:] = -1
      x["feat_row"][need] = np.arange(len(rows))
    self.pruned_at = complete

  @property
  def version(self) -> int:
    """Changes whenever events or side rows are applied (``live_context`` is rebuilt)."""
    return self.state.seq + self._side_version

  def live_context(self):
    """A ``moment.engine.Context`` over the live state, for requests (``mcjax.serve``): it
    sees every event taken so far. Exact for query times at or after the last eviction's
    watermark (``pruned_at``), which requests at the present always are."""
    return self.state.context()


def _sorted(table: dict) -> dict:
  order = np.lexsort((table["kind"], table["exposure_id"], table["sample_ts_ms"]))
  return ragged_take(table, order)
