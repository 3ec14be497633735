"""The continuous trainer's input: sample tables in the order a stream engine emits them.

An ``Emitted`` is one table the engine lets out at one moment: training samples (``split``
"train") or evaluation records ("eval"), as a columnar sample table of
``mcjax.contract.schema``, with its emission event time and the wall time it reached the
trainer. ``index`` is its position in the stream: the offset a checkpoint records.

``StreamEmitted(source, ...)`` runs the stream engine (``mcjax.stream``) over a replay or a
broker and emits what it makes as it makes it. ``ReplayEmitted(samples, tick_ms, speed)``
replays the output of ``mcjax.moment.engine.build_samples`` (what the stream engine emits,
row for row, for an in-order log) re-ordered by emission time: for an in-order log the two
give the same items. Rows are released tick by tick of event time
(``tick_ms``: the engine's micro-batch of events); inside a tick the evaluation records come
first, then the training samples, so a record is always scored before any sample emitted at
or after it is trained on (a training sample is emitted after its exposure: its window end or
its close). ``speed`` paces the replay: a tick is due ``(event_ms - first event_ms) / speed``
wall ms after the replay started (``speed=0``: everything is due at once, as fast as the
consumer takes it). ``clock_ms`` is event time (ms since the first item), which the trainer's
``max_wait_ms`` is measured on, so the way samples are cut into batches depends on the log
only, not on the speed or the source's micro-batches: a run paced at any speed, or unpaced,
trains the same batches (quality measured unpaced is the loop's quality at 1x), and a
restarted run cuts the same batches (exactly-once resume).
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Iterator

import numpy as np

from mcjax.contract.schema import TASKS
from mcjax.moment.events import NEVER
from mcjax.samples.table import table_slice
from mcjax.stream.columns import ragged_concat, ragged_take
from mcjax.stream.run import LagTrace, lag_s


@dataclasses.dataclass(frozen=True)
class Emitted:
  index: int        # position in the emitted stream (the source offset)
  split: str        # "train" (training samples) or "eval" (evaluation records)
  table: dict       # a columnar sample table
  event_ms: int     # the event time at which the engine emitted it
  clock_ms: float   # its event time, ms after the stream's first item
  arrival_s: float  # wall time (time.time()) at which it is due (replay: its schedule)


class ReplayEmitted:
  """``build_samples`` output replayed as the stream engine emits it (module docstring)."""

  def __init__(self, samples: dict, *, tick_ms: int = 1000, speed: float = 0.0):
    if tick_ms < 1:
      raise ValueError(f"tick_ms={tick_ms}: expected >= 1")
    if speed < 0:
      raise ValueError(f"speed={speed}: expected >= 0 (0: as fast as the consumer takes it)")
    self.tables = {"train": samples["train"], "eval": samples["eval"]}
    self.tick_ms, self.speed = int(tick_ms), float(speed)
    ts = {s: np.asarray(t["sample_ts_ms"], np.int64) for s, t in self.tables.items()}
    for s, t in ts.items():
      if len(t) > 1 and np.any(np.diff(t) < 0):
        raise ValueError(f"samples[{s!r}]: not sorted by sample_ts_ms")
    ticks = np.unique(np.concatenate([t // self.tick_ms for t in ts.values()]))
    self.items = []  # (split, lo, hi, event_ms)
    edges = {s: np.searchsorted(t // self.tick_ms, np.append(ticks, ticks[-1] + 1 if len(ticks)
                                                              else 0), side="left")
             for s, t in ts.items()}
    for k, tick in enumerate(ticks):
      for s in ("eval", "train"):
        lo, hi = int(edges[s][k]), int(edges[s][k + 1])
        if hi > lo:
          self.items.append((s, lo, hi, int(ts[s][hi - 1])))
    self.first_ms = self.items[0][3] if self.items else 0
    self.rows = {s: len(t) for s, t in ts.items()}

  def __len__(self) -> int:
    return len(self.items)

  def clock_ms(self, event_ms: int) -> float:
    return float(event_ms - self.first_ms)

  def read(self, start: int = 0) -> Iterator[Emitted]:
    """The emitted tables from position ``start`` on; the wall schedule starts now (at
    ``start``'s clock), so a resumed replay keeps its pace."""
    if not 0 <= start <= len(self.items):
      raise ValueError(f"start={start}: not a position of a stream of {len(self.items)}")
    wall0 = time.time()
    clock0 = self.clock_ms(self.items[start][3]) if start < len(self.items) else 0.0
    for i in range(start, len(self.items)):
      split, lo, hi, event_ms = self.items[i]
      clock = self.clock_ms(event_ms)
      due = wall0 + (clock - clock0) / 1000 / self.speed if self.speed else time.time()
      yield Emitted(i, split, table_slice(self.tables[split], lo, hi), event_ms, clock, due)


class StreamEmitted:
  """The stream engine's output as the loop's input: a ``mcjax.stream`` source (a replay or
  Redis) -> ``StreamEngine(requests=True)`` -> ``Emitted`` tables, cut like ``ReplayEmitted``.

  Rows are held until their tick of event time (``tick_ms``) is complete (the watermark has
  passed its end; a bounded source's end completes every tick), then the tick leaves as its
  requests ("eval": evaluation records' model inputs at E, labels 0), then its training
  samples ("train"), each sorted by (sample_ts_ms, exposure_id, kind). For an in-order log the
  items are ``ReplayEmitted(build_samples(log))``'s, with the labels of the requests 0: the
  labels of each record come with the engine's evaluation record when the exposure closes,
  kept by ``labels`` and joined by exposure id (``join_labels``). So every record is scored
  at its exposure time, before any of its own samples can be trained on, and the trainer cuts
  the same batches whatever the source's micro-batches (``clock_ms`` comes from event time).

  ``until_ms``: only rows before ``first + until_ms`` leave (``launch.realtime --until_min``);
  the stream is then read on, emitting nothing (a paced replay no longer paced), until every
  record before the cut has its labels. ``snapshot(keep_from)`` / ``restore(blob)``: the engine, the source position, the
  rows held and the items from ``keep_from`` on (those the trainer has not finished with), for
  the loop's checkpoint: a restarted loop ``read``s from its position again, exactly once.
  """

  def __init__(self, source, moment_cfg, stream_cfg=None, *, oracle=None, tick_ms: int = 1000,
               speed: float = 0.0, until_ms: int = 0, read_rows: int | None = None):
    from mcjax.stream.engine import StreamEngine  # pylint: disable=g-import-not-at-top
    if tick_ms < 1:
      raise ValueError(f"tick_ms={tick_ms}: expected >= 1")
    self.source, self.tick_ms, self.speed = source, int(tick_ms), float(speed)
    self.until_ms, self.read_rows = int(until_ms), read_rows
    self.engine = StreamEngine(moment_cfg, stream_cfg, oracle=oracle, requests=True)
    self.held = {"eval": [], "train": []}  # rows of ticks not complete yet
    self.queue = []      # released items not yet yielded
    self.retained = []   # yielded items the trainer may still need (index >= keep_from)
    self.labels = []     # (exposure_id, labels, label_mask) of the closed records
    self.next_index, self.first_ms, self.done, self.cut = 0, None, False, None
    self.requested = 0   # records released (before the cut)
    self.labelled = 0    # of those, with their labels
    self._committable = None  # the source position of the last snapshot
    self.lags, self._first, self._t0 = LagTrace(), None, None  # watermark lag (paced)

  def __len__(self) -> int:
    return self.next_index  # known once the stream has ended (the trainer asks at the end)

  def clock_ms(self, event_ms: int) -> float:
    return float(event_ms - self.first_ms)

  # ------------------------------------------------------------------ reading
  def read(self, start: int = 0) -> Iterator[Emitted]:
    for e in [e for e in self.retained if e.index >= start]:
      yield e
    while True:
      while self.queue:
        e = self.queue.pop(0)
        self.retained.append(e)
        yield e
      if self.done:
        return
      self._pull()

  def _pull(self) -> None:
    """One source read through the engine; completed ticks become queued items."""
    batch = self.source.read(self.read_rows, timeout_s=1.0)
    out = self.engine.finish() if batch is None else self.engine.push(batch)
    now = time.monotonic()
    self._t0 = self._t0 or now
    if self._first is None and self.engine.first_ts is not None:
      self._first = (now, self.engine.first_ts)
    self.lags.add(now - self._t0, self.engine.complete,
                  lag_s(self.engine, self._first, now, self.speed))
    for split in ("eval", "train"):
      got = out["request" if split == "eval" else split]
      if got is not None and len(got["kind"]) and self.cut is None:
        self.held[split].append(got)
    if out["eval"] is not None:
      t = out["eval"]
      o = np.argsort(t["exposure_id"], kind="stable")  # each entry sorted by exposure id
      self.labels.append((t["exposure_id"][o], t["labels"][o], t["label_mask"][o]))
      self.labelled += int(np.sum(t["sample_ts_ms"] < self._limit()))
    if self.cut is None:
      complete = NEVER if batch is None else self.engine.complete
      self._release(complete)
    if batch is None or (self.cut is not None and self.labelled >= self.requested):
      self.done = True
      self.source.close()

  def _limit(self) -> int:
    if not self.until_ms or self.first_ms is None:
      return NEVER
    return self.first_ms + self.until_ms

  def _release(self, complete: int) -> None:
    parts = {s: ragged_concat(t) if len(t) > 1 else t[0] for s, t in self.held.items() if t}
    if not parts:
      return
    if self.first_ms is None:
      self.first_ms = min(int(t["sample_ts_ms"].min()) for t in parts.values())
    limit = self._limit()
    end = min(complete, limit)
    self.held = {"eval": [], "train": []}
    ticks = {}
    for s, t in parts.items():
      t = ragged_take(t, np.lexsort((t["kind"], t["exposure_id"], t["sample_ts_ms"])))
      ts = t["sample_ts_ms"]
      done = (ts // self.tick_ms + 1) * self.tick_ms <= end if end < limit else ts < limit
      if not done.all():
        keep = ragged_take(t, np.flatnonzero(~done))
        if end < limit:
          self.held[s].append(keep)
      t = ragged_take(t, np.flatnonzero(done))
      if s == "eval":
        self.requested += len(t["kind"])
      tick = t["sample_ts_ms"] // self.tick_ms
      for k in np.unique(tick):
        lo, hi = np.searchsorted(tick, [k, k + 1])
        ticks.setdefault(int(k), {})[s] = table_slice(t, int(lo), int(hi))
    for k in sorted(ticks):
      for s in ("eval", "train"):
        if s in ticks[k]:
          table = ticks[k][s]
          event_ms = int(table["sample_ts_ms"][-1])
          self.queue.append(Emitted(self.next_index, s, table, event_ms,
                                    self.clock_ms(event_ms), time.time()))
          self.next_index += 1
    if complete >= limit:
      self.cut = limit
      if getattr(self.source, "speed", 0):  # a paced replay: read the labels' tail unpaced
        self.source.speed = 0.0

  # --------------------------------------------------------------- labels
  def join_labels(self, exposure_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, label_mask, found) of the records ``exposure_id`` from the closed records so
    far; a record not closed yet has found False (and zeros)."""
    n, t = len(exposure_id), len(TASKS)
    if not self.labels:
      return np.zeros((n, t), np.float32), np.zeros((n, t), np.float32), np.zeros(n, bool)
    if len(self.labels) > 1:  # merged once into one entry: later calls do not redo it
      ids, lab, mask = (np.concatenate([entry[i] for entry in self.labels]) for i in range(3))
      order = np.argsort(ids, kind="stable")
      self.labels = [(ids[order], lab[order], mask[order])]
    ids, lab, mask = self.labels[0]
    rows = np.clip(np.searchsorted(ids, exposure_id), 0, len(ids) - 1)
    found = ids[rows] == exposure_id
    out_l = np.where(found[:, None], lab[rows], np.zeros((1, t), np.float32))
    out_m = np.where(found[:, None], mask[rows], np.zeros((1, t), np.float32))
    return out_l, out_m, found

  # ----------------------------------------------------------- checkpoints
  def snapshot(self, keep_from: int) -> bytes:
    """Everything a restart needs to ``read(keep_from)`` on (see the class docstring); the
    source position is committed (acknowledged) when the next snapshot is taken."""
    self.retained = [e for e in self.retained if e.index >= keep_from]
    position = self.source.position()
    state = {k: getattr(self, k) for k in ("engine", "held", "queue", "retained", "labels",
                                           "next_index", "first_ms", "done", "cut",
                                           "requested", "labelled")}
    blob = pickle.dumps({**state, "position": position}, protocol=pickle.HIGHEST_PROTOCOL)
    if self._committable is not None and not self.done:
      self.source.commit(self._committable)
    self._committable = position
    return blob

  def restore(self, blob: bytes) -> None:
    state = pickle.loads(blob)
    position = state.pop("position")
    for k, v in state.items():
      setattr(self, k, v)
    if not self.done:
      self.source.seek(position)
