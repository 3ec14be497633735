"""Publishing an event log into a Redis stream (``launch.publish`` is its command line).

Side tables go first (one message per up to 65,536 rows of a table, in ``SIDE_TABLES``
order), then the events in the log's order, paced by ``ReplaySource`` (``speed=60``: a logged
hour per wall minute; 0: as fast as Redis takes them), then an end message. ``message="batch"``
sends up to ``batch_rows`` rows as one Arrow message (paced: the rows due within
``linger_s`` wall seconds); ``message="row"`` one message per event with a field per column
(what an external producer would write). The
message formats are ``mcjax.stream.redis_wire``'s.
"""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa

from mcjax.eventlog import schema as S
from mcjax.stream import redis_source
from mcjax.stream import redis_wire as W
from mcjax.stream.replay import ReplaySource
from mcjax.stream.source import Batch

SIDE_CHUNK_ROWS = 65_536


@dataclasses.dataclass
class Published:
  events: int = 0
  side_rows: int = 0
  messages: int = 0
  seconds: float = 0.0

  def summary(self) -> str:
    rate = self.events / self.seconds if self.seconds > 0 else float("inf")
    return (f"published {self.events} event rows and {self.side_rows} side rows in "
            f"{self.messages} messages in {self.seconds:.2f} s ({rate:,.0f} event rows/s)")


def _gather(src: ReplaySource, batch_rows: int, linger_s: float):
  """The next ``batch_rows`` rows of a paced replay, or fewer once ``linger_s`` of wall time
  has passed since the first of them came due (a paced read returns the rows due now, often
  one: sending each alone would publish at the speed of one-event messages)."""
  first = src.read(batch_rows, timeout_s=1.0)
  if first is None or src.speed == 0 or not len(first):
    return first
  parts, n, deadline = [first], len(first), time.monotonic() + linger_s
  while n < batch_rows and (left := deadline - time.monotonic()) > 0:
    more = src.read(batch_rows - n, timeout_s=left)
    if more is None:
      break
    parts.append(more)
    n += len(more)
  return Batch(events=pa.concat_tables([b.events for b in parts]),
               offsets=[o for b in parts for o in b.offsets], side=first.side)


def publish(log_dir: str, url: str, speed: float = 0.0, batch_rows: int = 1024,
            message: str = "batch", end: bool = True, linger_s: float = 0.1) -> Published:
  """Publishes ``log_dir`` into the stream at ``url`` (see the module docstring); a paced
  batch message waits at most ``linger_s`` wall seconds for its rows."""
  if message not in ("batch", "row"):
    raise ValueError(f"--message={message}: expected batch or row")
  client, stream = redis_source.connect(url)
  src = ReplaySource(log_dir, speed=speed, batch_rows=batch_rows)
  out = Published()
  t0 = time.perf_counter()
  try:
    while (batch := _gather(src, batch_rows, linger_s)) is not None:
      pipe = client.pipeline(transaction=False)
      for name in S.SIDE_TABLES:  # the schema's order, whole tables before any event
        table = batch.side.get(name)
        for start in range(0, table.num_rows if table is not None else 0, SIDE_CHUNK_ROWS):
          pipe.xadd(stream, W.side_message(name, table.slice(start, SIDE_CHUNK_ROWS)))
          out.side_rows += min(SIDE_CHUNK_ROWS, table.num_rows - start)
          out.messages += 1
      if len(batch):
        msgs = (W.row_messages(batch.events) if message == "row"
                else [W.batch_message(batch.events)])
        for fields in msgs:
          pipe.xadd(stream, fields)
        out.messages += len(msgs)
        out.events += len(batch)
      pipe.execute()
    if end:
      client.xadd(stream, W.END_MESSAGE)
      out.messages += 1
  finally:
    out.seconds = time.perf_counter() - t0
    client.close()
  return out
