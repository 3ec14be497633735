"""Stream sources: how fast the replay and the Redis source deliver an event log, and which
Redis message form keeps up (one message per event, or one Arrow message per batch).

    python -m benchmarks.stream_sources --log=runs/default/world --rows=1000000

For each form it publishes the log's first ``--rows`` events (0: all) into a fresh stream of
a local redis-server (``mcjax.stream.redis_server``), as fast as Redis takes them
(``launch.publish`` at ``--speed=0``), then reads them back through ``RedisSource``; each
``--repeats`` times, the median reported. The slower of the two rates divided by the log's
rate in its busiest logged hour ("x peak rate") is the largest speed factor that form keeps
up with. Replay: ``ReplaySource`` read to the end at ``--speed=0``; "bytes/event": Redis
memory per event row stored.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from mcjax.stream import publish as P
from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.stream.redis_server import RedisServer
from mcjax.stream.redis_source import RedisSource, connect
from mcjax.stream.replay import ReplaySource

_LOG = flags.DEFINE_string("log", None, "Event-log folder.", required=True)
_ROWS = flags.DEFINE_integer("rows", 0, "Use the first ROWS events (0: all).")
_BATCH_ROWS = flags.DEFINE_list("batch_rows", ["64", "256", "1024"],
                                "Rows per batch message to measure.")
_ROW_MESSAGES = flags.DEFINE_bool("row_messages", True, "Also one message per event.")
_READ_ROWS = flags.DEFINE_integer("read_rows", 4096, "max_rows of each source read.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per case (median reported).")


def _prefix_log(log: str, rows: int, tmp: str) -> str:
  if not rows:
    return log
  side = {name: io.read_side(log, name) for name in S.SIDE_TABLES}
  return io.write_log(os.path.join(tmp, "prefix"), io.read_events(log).slice(0, rows), side)


def _drain(src, read_rows: int) -> int:
  n = 0
  while (b := src.read(read_rows)) is not None:
    n += len(b)
  return n


def _redis_case(server: RedisServer, log: str, message: str, batch_rows: int, read_rows: int,
                run: int) -> dict:
  url = server.url(f"bench-{message}-{batch_rows}-{run}")
  client, stream = connect(url)
  before = client.info("memory")["used_memory"]
  pub = P.publish(log, url, batch_rows=batch_rows, message=message)
  stored = client.info("memory")["used_memory"] - before
  src = RedisSource(url, group="bench", consumer="c")
  start = time.perf_counter()
  n = _drain(src, read_rows)
  read_s = time.perf_counter() - start
  assert n == pub.events, (n, pub.events)
  src.close()
  client.delete(stream)
  client.close()
  return {"publish": pub.events / pub.seconds, "read": n / read_s,
          "bytes_per_event": stored / pub.events, "messages": pub.messages}


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    log = _prefix_log(_LOG.value, _ROWS.value, tmp)
    ts = io.read_events(_LOG.value, columns=["ts_ms"]).column("ts_ms").to_numpy()
    mean = ts.size / max((ts[-1] - ts[0]) / 1000.0, 1e-9)
    log_rate = np.bincount((ts - ts[0]) // 3_600_000).max() / 3600.0  # the busiest hour
    print(f"log: {ts.size} events over {(ts[-1] - ts[0]) / 3.6e6:.2f} logged hours, "
          f"{mean:,.1f} per logged second on average, {log_rate:,.1f} in the busiest hour; "
          f"measured on its first {_ROWS.value or ts.size} events")
    rates = []
    for _ in range(_REPEATS.value):
      src = ReplaySource(log)
      start = time.perf_counter()
      n = _drain(src, _READ_ROWS.value)
      rates.append(n / (time.perf_counter() - start))
    replay = statistics.median(rates)
    print(f"{'source':<28}{'publish rows/s':>16}{'read rows/s':>14}{'x peak rate':>13}"
          f"{'bytes/event':>13}")
    print(f"{'replay (speed=0)':<28}{'':>16}{replay:>14,.0f}{replay / log_rate:>13,.0f}"
          f"{'':>13}")
    cases = [("batch", int(k)) for k in _BATCH_ROWS.value]
    if _ROW_MESSAGES.value:
      cases.append(("row", 256))
    with RedisServer() as server:
      for message, k in cases:
        runs = [_redis_case(server, log, message, k, _READ_ROWS.value, r)
                for r in range(_REPEATS.value)]
        pub = statistics.median(r["publish"] for r in runs)
        read = statistics.median(r["read"] for r in runs)
        label = (f"redis, {k}-row messages" if message == "batch"
                 else "redis, a message per event")
        print(f"{label:<28}{pub:>16,.0f}{read:>14,.0f}{min(pub, read) / log_rate:>13,.0f}"
              f"{runs[0]['bytes_per_event']:>13,.0f}")


if __name__ == "__main__":
  app.run(main)
