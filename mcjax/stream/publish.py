"""Publishing an event log into a Redis stream (``launch.publish`` is its command line).

Side tables go first (one message per up to 65,536 rows of a table, in ``SIDE_TABLES``
order), then the events in the log's order, paced by ``ReplaySource`` (``speed=60``: a logged
hour per wall minute; 0: as fast as Redis takes them), then an end message. ``message="batch"``
sends each read of up to ``batch_rows`` rows as one Arrow message; ``message="row"`` one
message per event with a field per column (what an external producer would write). The
message formats are ``mcjax.stream.redis_wire``'s.
"""

from __future__ import annotations

import dataclasses
import time

from mcjax.eventlog import schema as S
from mcjax.stream import redis_source
from mcjax.stream import redis_wire as W
from mcjax.stream.replay import ReplaySource

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


def publish(log_dir: str, url: str, speed: float = 0.0, batch_rows: int = 256,
            message: str = "batch", end: bool = True) -> Published:
  """Publishes ``log_dir`` into the stream at ``url`` (see the module docstring)."""
  if message not in ("batch", "row"):
    raise ValueError(f"--message={message}: expected batch or row")
  client, stream = redis_source.connect(url)
  src = ReplaySource(log_dir, speed=speed, batch_rows=batch_rows)
  out = Published()
  t0 = time.perf_counter()
  try:
    while (batch := src.read(batch_rows, timeout_s=1.0)) is not None:
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
