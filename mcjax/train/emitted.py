"""The continuous trainer's input: sample tables in the order a stream engine emits them.

An ``Emitted`` is one table the engine lets out at one moment: training samples (``split``
"train") or evaluation records ("eval"), as a columnar sample table of
``mcjax.contract.schema``, with its emission event time and the wall time it reached the
trainer. ``index`` is its position in the stream: the offset a checkpoint records.

``ReplayEmitted(samples, tick_ms, speed)`` is the source the loop runs on today: the output of
``mcjax.moment.engine.build_samples`` (what the stream engine emits, row for row, for an
in-order log) re-ordered by emission time. Rows are released tick by tick of event time
(``tick_ms``: the engine's micro-batch of events); inside a tick the evaluation records come
first, then the training samples, so a record is always scored before any sample emitted at
or after it is trained on (a training sample is emitted after its exposure: its window end or
its close). ``speed`` paces the replay: a tick is due ``(event_ms - first event_ms) / speed``
wall ms after the replay started (``speed=0``: everything is due at once, as fast as the
consumer takes it). ``clock_ms`` is that schedule, which the trainer's ``max_wait_ms`` is
measured on, so the way samples are cut into batches depends on the log and the speed only
(a restarted run cuts the same batches: exactly-once resume).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from mcjax.samples.table import table_slice


@dataclasses.dataclass(frozen=True)
class Emitted:
  index: int        # position in the emitted stream (the source offset)
  split: str        # "train" (training samples) or "eval" (evaluation records)
  table: dict       # a columnar sample table
  event_ms: int     # the event time at which the engine emitted it
  clock_ms: float   # the source's clock when it was due (ms since the stream started)
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
    return (event_ms - self.first_ms) / self.speed if self.speed else 0.0

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
      due = wall0 + (clock - clock0) / 1000 if self.speed else time.time()
      yield Emitted(i, split, table_slice(self.tables[split], lo, hi), event_ms, clock, due)
