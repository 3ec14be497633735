"""Replay of an event-log folder as a stream: the embedded source of runs, tests and benchmarks.

``ReplaySource(log_dir, speed)`` delivers the log's event rows in the log's own order (a valid
log is sorted by (ts_ms, exposure_id), so this is event-time order with ties kept exactly as
written; an unsorted log is replayed in its file order, which is how late events are staged)
and its four side tables whole in the first batch, before any event. An event's offset is its
row number in the log ("0", "1", ...).

The events are read as they are delivered, a Parquet row group (at most ``chunk_rows`` rows)
at a time, part after part in name order, so a replay holds one chunk of the log in memory
however long the log is; a ``seek`` starts reading at the row group that holds its row.

Pacing: with ``speed=0`` a read returns as many rows as asked for at once. With ``speed=S``
the row whose event time is ``t`` is due ``(t - t0) / S`` wall seconds after the first event
after the start (or a ``seek``) was delivered, ``t0`` being that event's time; so ``speed=60``
plays one logged hour in one wall minute. A row is never delivered before the rows in front
of it, so in an unsorted log a row is due when the latest event time since the start is.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.stream.source import Batch

DEFAULT_BATCH_ROWS = 4096
CHUNK_ROWS = 65_536


class ReplaySource:
  """Replays one event-log folder (``events.parquet``, a file or a folder of parts, and the
  side tables; see ``mcjax.eventlog.io``).

  Args:
    log_dir: the log folder.
    speed: logged seconds per wall second (60: an hour a minute); 0 for no pacing.
    batch_rows: the most rows a ``read`` returns when it is not given ``max_rows``.
    chunk_rows: the most event rows read from the files at a time.
    clock, sleep: wall clock (seconds) and sleep, injectable for tests.
  """

  def __init__(self, log_dir: str, speed: float = 0.0, batch_rows: int = DEFAULT_BATCH_ROWS,
               *, chunk_rows: int = CHUNK_ROWS, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep):
    if not speed >= 0:
      raise ValueError(f"replay {log_dir}: speed={speed} must be >= 0 (0: no pacing)")
    if batch_rows < 1 or chunk_rows < 1:
      raise ValueError(f"replay {log_dir}: batch_rows={batch_rows} and chunk_rows="
                       f"{chunk_rows} must be >= 1")
    self.name = f"replay:{log_dir}"
    self.speed, self.batch_rows, self.chunk_rows = float(speed), int(batch_rows), chunk_rows
    self._clock, self._sleep = clock, sleep
    self._events_path = io.table_path(log_dir, S.EVENTS_FILE)
    self._parts = [_Part(p, self._events_path) for p in io.table_files(self._events_path)]
    self._part_start = [0, *itertools.accumulate(p.rows for p in self._parts)]
    self._side = {name: io.conform(io.read_side(log_dir, name), schema,
                                   io.table_path(log_dir, name))
                  for name, schema in S.SIDE_TABLES.items()}
    self._side_sent = False
    self._restart(0)

  def __len__(self) -> int:
    """Event rows in the log."""
    return self._part_start[-1]

  # -------------------------------------------------------------------------- reading

  def _restart(self, row: int) -> None:
    """The next row to deliver is ``row``; pacing starts again from it."""
    self._next = row
    self._chunks = self._chunks_from(row)
    self._chunk: pa.Table | None = None  # the rows from self._next on, up to a chunk's end
    self._due: np.ndarray | None = None  # their due times (latest event time so far, ms)
    self._at = 0                         # rows of the chunk already delivered
    self._latest = None                  # the latest event time since the restart
    self._anchor = None  # (wall clock, due ms) of the first row delivered since the restart

  def _chunks_from(self, row: int) -> Iterator[pa.Table]:
    first = bisect.bisect_right(self._part_start, row) - 1
    for i in range(first, len(self._parts)):
      skip = row - self._part_start[i] if i == first else 0
      yield from self._parts[i].chunks(skip, self.chunk_rows)

  def _load(self) -> bool:
    """Makes the chunk hold undelivered rows; False at the log's end."""
    while self._chunk is None or self._at == self._chunk.num_rows:
      chunk = next(self._chunks, None)
      if chunk is None:
        return False
      ts = chunk.column("ts_ms").to_numpy()
      due = np.maximum.accumulate(ts) if ts.size else ts
      if self._latest is not None and ts.size:
        due = np.maximum(due, self._latest)
      if ts.size:
        self._latest = int(due[-1])
      self._chunk, self._due, self._at = chunk, due, 0
    return True

  def read(self, max_rows: int | None = None, timeout_s: float = 0.0) -> Batch | None:
    """The next rows (at most ``max_rows``, default ``batch_rows``): the due ones when paced,
    waiting up to ``timeout_s`` for the next one to come due (an empty batch if it does not);
    None once every row and the side tables were delivered."""
    limit = self.batch_rows if max_rows is None else int(max_rows)
    if limit < 1:
      raise ValueError(f"{self.name}: read(max_rows={max_rows}) must ask for >= 1 row")
    if not self._load() and self._side_sent:
      return None
    parts, waited = [], False
    n = 0
    while n < limit and self._load():
      end = min(self._chunk.num_rows, self._at + limit - n)
      if self.speed > 0:
        due = self._paced_end(end, 0.0 if waited else timeout_s)
        waited = True
        if due == self._at:
          break
        end = due
      parts.append(self._chunk.slice(self._at, end - self._at))
      n += end - self._at
      self._at = end
      if self.speed > 0 and end < self._chunk.num_rows and n < limit:
        break  # the next row is not due yet
    side = {} if self._side_sent else dict(self._side)
    events = pa.concat_tables(parts) if parts else S.EVENT_SCHEMA.empty_table()
    offsets = [str(i) for i in range(self._next, self._next + n)]
    self._next += n
    self._side_sent = True
    return Batch(events=events, offsets=offsets, side=side)

  def _paced_end(self, end: int, timeout_s: float) -> int:
    """How far (<= ``end``) the chunk's rows are due now, after waiting up to ``timeout_s``
    for the next one."""
    if self._anchor is None:
      self._anchor = (self._clock(), int(self._due[self._at]))
    wall0, due0 = self._anchor
    wait = (int(self._due[self._at]) - due0) / 1000.0 / self.speed - (self._clock() - wall0)
    if wait > 0 and timeout_s > 0:
      self._sleep(min(wait, timeout_s))
    elapsed_ms = (self._clock() - wall0) * self.speed * 1000.0
    # Rows due by now: due_ms - due0 <= elapsed (with a guard for float rounding).
    return self._at + int(np.searchsorted(self._due[self._at:end] - due0, elapsed_ms + 1e-6,
                                          side="right"))

  # -------------------------------------------------------------------------- position

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
    if not 0 <= rows <= len(self):
      raise ValueError(f"{self.name}: seek to row {rows}, but the log has {len(self)} event "
                       "rows")
    self._side_sent = side
    self._restart(rows)

  def commit(self, position: dict) -> None:
    """Nothing to forget: a replay can always be read again."""

  def close(self) -> None:
    """Drops the chunk in hand (the files are opened per chunk)."""
    self._chunk, self._due = None, None
    self._chunks = iter(())


class _Part:
  """One Parquet file of ``events.parquet``: its row groups, read a chunk at a time."""

  def __init__(self, path: str, table_path: str):
    self.path, self.table_path = path, table_path
    try:
      meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as e:
      raise _unreadable(path, e) from e
    self.rows = meta.num_rows
    self.group_start = [0, *itertools.accumulate(meta.row_group(g).num_rows
                                                 for g in range(meta.num_row_groups))]
    names = set(meta.schema.to_arrow_schema().names)
    self.hive = not set(S.EVENT_SCHEMA.names) <= names  # columns from key=value folders

  def chunks(self, skip: int, chunk_rows: int) -> Iterator[pa.Table]:
    """The part's rows from row ``skip`` on, conformed to ``EVENT_SCHEMA``."""
    if skip >= self.rows:
      return
    try:
      if self.hive:  # a partition column lives in the folder name: read the part whole
        table = ds.dataset([self.path], format="parquet", partitioning="hive",
                           partition_base_dir=self.table_path).to_table()
        batches = table.slice(skip).to_batches(max_chunksize=chunk_rows)
        skip = 0
      else:
        first = bisect.bisect_right(self.group_start, skip) - 1
        skip -= self.group_start[first]
        groups = list(range(first, len(self.group_start) - 1))
        batches = pq.ParquetFile(self.path).iter_batches(
            batch_size=chunk_rows, row_groups=groups, columns=S.EVENT_SCHEMA.names)
      for batch in batches:
        if skip >= batch.num_rows:
          skip -= batch.num_rows
          continue
        table = pa.Table.from_batches([batch.slice(skip)])
        skip = 0
        yield io.conform(table, S.EVENT_SCHEMA, self.path)
    except (pa.ArrowException, OSError) as e:
      raise _unreadable(self.path, e) from e


def _unreadable(path: str, e: Exception) -> io.UnreadableTableError:
  return io.UnreadableTableError(path, f"unreadable Parquet file ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())})")
