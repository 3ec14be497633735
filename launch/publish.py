"""Publishes an event log into a Redis stream, paced like a replay, for the stream engine to read.

    python -m mcjax.stream.redis_server --port=6379 &      # or any Redis >= 6.2
    python -m launch.publish --log=runs/default/world --stream=redis://127.0.0.1:6379/events \
        --speed=60 --batch_rows=1024

Side tables go first, then the events in the log's order, paced like a replay (``--speed=60``:
a logged hour per wall minute; 0: as fast as Redis takes them), then an end message
(``mcjax.stream.publish``). ``--message=batch`` (the default) sends up to ``--batch_rows``
rows as one Arrow message (paced: the rows due within ``--linger_ms``); ``--message=row`` one
message per event, with a field per column (what an external producer would write);
benchmarks/RESULTS.md ("Stream sources") measures both.
"""

from __future__ import annotations

import sys

from absl import app, flags

from mcjax.stream.publish import publish

_LOG = flags.DEFINE_string("log", None, "Event-log folder to publish.")
_STREAM = flags.DEFINE_string("stream", None, "redis://host:port/STREAM_NAME to publish into.")
_SPEED = flags.DEFINE_float("speed", 0.0, "Logged seconds per wall second (60: an hour a "
                            "minute); 0: as fast as Redis takes them.")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", 1024, "Most event rows per message with "
                                   "--message=batch (and per read of the log).")
_LINGER_MS = flags.DEFINE_integer("linger_ms", 100, "With --speed > 0: the most wall "
                                  "milliseconds a batch message waits for its rows.")
_MESSAGE = flags.DEFINE_enum("message", "batch", ["batch", "row"], "batch: one Arrow message "
                             "per read; row: one message per event, a field per column.")
_END = flags.DEFINE_bool("end", True, "Send an end message after the log (a source stops "
                         "there).")


def main(argv) -> None:
  del argv
  if not _LOG.value or not _STREAM.value:
    print("launch.publish: --log and --stream are required", file=sys.stderr)
    sys.exit(2)
  try:
    result = publish(_LOG.value, _STREAM.value, _SPEED.value, _BATCH_ROWS.value,
                     _MESSAGE.value, _END.value, _LINGER_MS.value / 1000.0)
  except (ValueError, ConnectionError, OSError) as e:
    print(f"launch.publish: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)
  print(result.summary())


if __name__ == "__main__":
  app.run(main)
