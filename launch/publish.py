"""Publishes an event log into a Redis stream, paced like a replay, for the stream engine to read.

    python -m mcjax.stream.redis_server --port=6379 &      # or any Redis >= 6.2
    python -m launch.publish --log=runs/default/world --stream=redis://127.0.0.1:6379/events \
        --speed=60 --batch_rows=256

Side tables go first (one message per up to 65,536 rows of a table), then the events in the
log's order, paced by ``ReplaySource`` (``--speed=60``: a logged hour per wall minute; 0: as
fast as Redis takes them), then an end message. ``--message=batch`` (the default) sends each
read of up to ``--batch_rows`` rows as one Arrow message; ``--message=row`` sends one message
per event, with a field per column (what an external producer would write). The message
formats are ``mcjax.stream.redis_wire``'s; benchmarks/RESULTS.md ("Stream sources") measures
both.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from absl import app, flags

from mcjax.eventlog import schema as S
from mcjax.stream import redis_source
from mcjax.stream import redis_wire as W
from mcjax.stream.replay import ReplaySource

SIDE_CHUNK_ROWS = 65_536

_LOG = flags.DEFINE_string("log", None, "Event-log folder to publish.")
_STREAM = flags.DEFINE_string("stream", None, "redis://host:port/STREAM_NAME to publish into.")
_SPEED = flags.DEFINE_float("speed", 0.0, "Logged seconds per wall second (60: an hour a "
                            "minute); 0: as fast as Redis takes them.")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", 256, "Most event rows per read of the log "
                                   "(and per message with --message=batch).")
_MESSAGE = flags.DEFINE_enum("message", "batch", ["batch", "row"], "batch: one Arrow message "
                             "per read; row: one message per event, a field per column.")
_END = flags.DEFINE_bool("end", True, "Send an end message after the log (a source stops "
                         "there).")


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


def main(argv) -> None:
  del argv
  if not _LOG.value or not _STREAM.value:
    print("launch.publish: --log and --stream are required", file=sys.stderr)
    sys.exit(2)
  try:
    result = publish(_LOG.value, _STREAM.value, _SPEED.value, _BATCH_ROWS.value,
                     _MESSAGE.value, _END.value)
  except (ValueError, ConnectionError, OSError) as e:
    print(f"launch.publish: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)
  print(result.summary())


if __name__ == "__main__":
  app.run(main)
