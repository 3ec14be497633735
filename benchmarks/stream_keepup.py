"""The largest speed factor the stream engine keeps up with: paced replays of a log through
``launch.stream``'s loop (``mcjax.stream.run.run``: engine, parts written, checkpoints), from
the replay source and through Redis, with the watermark lag recorded over the whole log.

    python -m benchmarks.stream_keepup --log=runs/default/world --speeds=200,300,400 \
        --sources=replay,redis --json_out=runs/stream/keepup.json
    # the evening peak only (logged hours 18-24), where the rate is highest
    python -m benchmarks.stream_keepup --log=runs/default/world --hours=18,24 --speeds=300,600

For each source and speed S the log is played at S logged seconds per wall second: the replay
source paces itself; for Redis a ``launch.publish --speed=S`` subprocess paces the messages
into a fresh stream of a local ``redis-server`` (``mcjax.stream.redis_server``) while the
engine consumes them. The lag is ``mcjax.stream.run.lag_s``: how many wall seconds the
watermark is behind the schedule, after every micro-batch. A speed keeps up when the lag
stays under ``--bounded_s`` through the whole log (the busiest hour included) and is back
under a second at the end. Wall-time numbers: run on a quiet machine, and read them with the
load average printed beside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from mcjax.moment import MomentConfig
from mcjax.stream import run as run_lib
from mcjax.stream.redis_server import RedisServer

_LOG = flags.DEFINE_string("log", None, "Event-log folder.", required=True)
_SPEEDS = flags.DEFINE_list("speeds", ["200", "300", "400"], "Speed factors to try.")
_SOURCES = flags.DEFINE_list("sources", ["replay", "redis"], "replay and/or redis.")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", 16384, "Most event rows per micro-batch (a "
                                   "paced source delivers what is due; this binds when behind).")
_BOUNDED_S = flags.DEFINE_float("bounded_s", 10.0, "Largest lag (wall s) that still keeps up.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write every run's numbers here (JSON).")
_HOURS = flags.DEFINE_list("hours", [], "FROM,TO: replay only the events of these logged hours "
                           "(from the log's first midnight), e.g. 18,24 for the evening peak.")


def cut_log(log: str, hours: list[str], tmp: str) -> str:
  """A copy of ``log`` with the events of logged hours [FROM, TO) only (side tables whole)."""
  import pyarrow.compute as pc
  from mcjax.eventlog import io
  from mcjax.eventlog import schema as S
  events = io.read_events(log)
  day0 = int(pc.min(events["ts_ms"]).as_py()) // 86_400_000 * 86_400_000
  lo, hi = (day0 + int(float(h) * 3_600_000) for h in hours)
  ts = events["ts_ms"]
  keep = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
  side = {name: io.read_side(log, name) for name in S.SIDE_TABLES}
  return io.write_log(os.path.join(tmp, "cut"), events.filter(keep), side)


def one(source_kind: str, speed: float, log: str, server, tmp: str) -> dict:
  out = os.path.join(tmp, f"{source_kind}_{speed:g}")
  pub = None
  if source_kind == "replay":
    source = run_lib.open_source(f"replay:{log}", speed=speed, batch_rows=_BATCH_ROWS.value)
  else:
    url = server.url(f"keepup-{speed:g}")
    pub = subprocess.Popen([sys.executable, "-m", "launch.publish", f"--log={log}",
                            f"--stream={url}", f"--speed={speed:g}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    source = run_lib.open_source(url, batch_rows=_BATCH_ROWS.value)
  load0 = os.getloadavg()[0]
  start = time.perf_counter()
  got = run_lib.run(source, out, MomentConfig(), oracle=None, speed=speed,
                    progress_s=1e9, log=lambda _: None)
  wall = time.perf_counter() - start
  if pub is not None:
    err = pub.communicate()[1]
    if pub.returncode:
      raise RuntimeError(f"launch.publish failed: {err.strip()[-500:]}")
  lag = got["lag"]
  keeps = bool(lag["samples"]) and lag["max_s"] <= _BOUNDED_S.value and lag["end_s"] < 1.0
  return {"source": source_kind, "speed": speed, "wall_s": wall,
          "events": got["engine"]["events_in"], "events_per_s": got["engine"]["events_in"] / wall,
          "samples": got["counts"], "lag": lag, "keeps_up": keeps,
          "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def main(argv) -> None:
  del argv
  rows = []
  print("| source | speed | wall s | events/s | lag p50 / p99 / max s | lag at the end s "
        "| keeps up | load avg (start, end) |")
  print("|---|---|---|---|---|---|---|---|")
  if _HOURS.value and (len(_HOURS.value) != 2
                       or not 0 <= float(_HOURS.value[0]) < float(_HOURS.value[1])):
    raise app.UsageError(f"--hours={','.join(_HOURS.value)}: give FROM,TO with 0 <= FROM < TO")
  with tempfile.TemporaryDirectory() as tmp:
    log = cut_log(_LOG.value, _HOURS.value, tmp) if _HOURS.value else _LOG.value
    server = RedisServer(workdir=tmp).start() if "redis" in _SOURCES.value else None
    try:
      for kind in _SOURCES.value:
        for speed in (float(s) for s in _SPEEDS.value):
          r = one(kind, speed, log, server, tmp)
          lag = r["lag"]
          print(f"| {kind} | {speed:g}x | {r['wall_s']:.0f} | {r['events_per_s']:,.0f} | "
                f"{lag['p50_s']:.2f} / {lag['p99_s']:.2f} / {lag['max_s']:.2f} | "
                f"{lag['end_s']:.2f} | {'yes' if r['keeps_up'] else 'no'} | "
                f"{r['load_avg'][0]}, {r['load_avg'][1]} |", flush=True)
          rows.append(r)
    finally:
      if server is not None:
        server.stop()
  for kind in _SOURCES.value:
    ok = [r["speed"] for r in rows if r["source"] == kind and r["keeps_up"]]
    print(f"{kind}: largest speed tried that keeps up: {max(ok):g}x" if ok
          else f"{kind}: none of the speeds tried keeps up")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
