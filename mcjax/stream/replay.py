"""Replay of an event-log folder as a stream: the embedded source of runs, tests and benchmarks.

``ReplaySource(log_dir, speed)`` delivers the log's event rows in the log's own order (a valid
log is sorted by (ts_ms, exposure_id), so this is event-time order with ties kept exactly as
written; an unsorted log is replayed in its file order, which is how late events are staged)
and its four side tables whole in the first batch, before any event. An event's offset is its
row number in the log ("0", "1", ...).

Pacing: with ``speed=0`` a read returns as many rows as asked for at once. With ``speed=S``
the row whose event time is ``t`` is due ``(t - t0) / S`` wall seconds after the first event
after the start (or a ``seek``) was delivered, ``t0`` being that event's time; so ``speed=60``
plays one logged hour in one wall minute. A row is never delivered before the rows in front
of it, so in an unsorted log a row is due when the latest event time so far is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.stream.source import Batch

DEFAULT_BATCH_ROWS = 4096


class ReplaySource:
  """Replays one event-log folder (``events.parquet``, a file or a folder of parts, and the
  side tables; see ``mcjax.eventlog.io``).

  Args:
    log_dir: the log folder.
    speed: logged seconds per wall second (60: an hour a minute); 0 for no pacing.
    batch_rows: the most rows a ``read`` returns when it is not given ``max_rows``.
    clock, sleep: wall clock (seconds) and sleep, injectable for tests.
  """

  def __init__(self, log_dir: str, speed: float = 0.0, batch_rows: int = DEFAULT_BATCH_ROWS,
               *, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep):
    if not speed >= 0:
      raise ValueError(f"replay {log_dir}: speed={speed} must be >= 0 (0: no pacing)")
    if batch_rows < 1:
      raise ValueError(f"replay {log_dir}: batch_rows={batch_rows} must be >= 1")
    self.name = f"replay:{log_dir}"
    self.speed, self.batch_rows = float(speed), int(batch_rows)
    self._clock, self._sleep = clock, sleep
    self._events = io.conform(io.read_events(log_dir), S.EVENT_SCHEMA,
                              io.table_path(log_dir, S.EVENTS_FILE))
    self._side = {name: io.conform(io.read_side(log_dir, name), schema,
                                   io.table_path(log_dir, name))
                  for name, schema in S.SIDE_TABLES.items()}
    ts = self._events.column("ts_ms").to_numpy()
    self._due_ms = np.maximum.accumulate(ts) if ts.size else ts  # a row waits for its elders
    self._next = 0            # the next event row to deliver
    self._side_sent = False
    self._anchor = None       # (wall clock, due_ms) of the first row delivered since start/seek

  def __len__(self) -> int:
    """Event rows in the log."""
    return self._events.num_rows

  def read(self, max_rows: int | None = None, timeout_s: float = 0.0) -> Batch | None:
    """The next rows (at most ``max_rows``, default ``batch_rows``): the due ones when paced,
    waiting up to ``timeout_s`` for the next one to come due (an empty batch if it does not);
    None once every row and the side tables were delivered."""
    limit = self.batch_rows if max_rows is None else int(max_rows)
    if limit < 1:
      raise ValueError(f"{self.name}: read(max_rows={max_rows}) must ask for >= 1 row")
    n = self._events.num_rows
    if self._next >= n and self._side_sent:
      return None
    end = min(self._next + limit, n)
    if self.speed > 0 and self._next < n:
      end = self._paced_end(end, timeout_s)
    side = {} if self._side_sent else dict(self._side)
    events = self._events.slice(self._next, end - self._next)
    offsets = [str(i) for i in range(self._next, end)]
    self._next, self._side_sent = end, True
    return Batch(events=events, offsets=offsets, side=side)

  def _paced_end(self, end: int, timeout_s: float) -> int:
    """How far (<= ``end``) the rows are due now, after waiting up to ``timeout_s`` for the
    next one."""
    if self._anchor is None:
      self._anchor = (self._clock(), int(self._due_ms[self._next]))
    wall0, due0 = self._anchor
    wait = self._wall_due(self._next, due0) - (self._clock() - wall0)
    if wait > 0 and timeout_s > 0:
      self._sleep(min(wait, timeout_s))
    elapsed_ms = (self._clock() - wall0) * self.speed * 1000.0
    # Rows due by now: due_ms - due0 <= elapsed (as in _wall_due, with a float guard).
    due = self._next + int(np.searchsorted(self._due_ms[self._next:end] - due0,
                                           elapsed_ms + 1e-6, side="right"))
    return min(due, end)

  def _wall_due(self, row: int, due0: int) -> float:
    return (int(self._due_ms[row]) - due0) / 1000.0 / self.speed

  def position(self) -> dict:
    """``{"rows": event rows delivered, "side": side tables delivered}``."""
    return {"rows": self._next, "side": self._side_sent}

  def seek(self, position: dict) -> None:
    """Continues after ``position``: the rows from ``position["rows"]`` on (the side tables
    again only if they had not been delivered); pacing restarts from the next row."""
    try:
      rows, side = int(position["rows"]), bool(position["side"])
    except (KeyError, TypeError, ValueError):
      raise ValueError(f"{self.name}: seek({position!r}) is not a replay position "
                       "(expected {'rows': int, 'side': bool})") from None
    if not 0 <= rows <= self._events.num_rows:
      raise ValueError(f"{self.name}: seek to row {rows}, but the log has "
                       f"{self._events.num_rows} event rows")
    self._next, self._side_sent, self._anchor = rows, side, None

  def commit(self, position: dict) -> None:
    """Nothing to forget: a replay can always be read again."""

  def close(self) -> None:
    """Nothing held open (the log is read whole at construction)."""
