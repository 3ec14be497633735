"""Running the stream engine: a source in, a growing samples folder out (``launch.stream``).

``open_source("replay:DIR" | "redis://host:port/STREAM", ...)`` opens a source;
``run(source, out_dir, cfg, ...)`` feeds it through a ``StreamEngine`` into a ``SampleSink``
and checkpoints every ``checkpoint_s`` wall seconds, when the source ends and when asked to
stop (SIGTERM, SIGINT): the engine state, the source position and the parts written are
committed together, then the source is told (``Source.commit``). Started again on the same
folder, ``run`` resumes from the last checkpoint (the same config only). Every checkpoint
publishes ``out_dir/train`` and ``out_dir/eval``.

A progress line every ``progress_s``: events/s, samples/s, the watermark and its lag (for a
paced source: how far the watermark is behind the event time the pace has reached), and the
dead letters per kind (``.stream/dead_letters.jsonl``). The lag is in wall seconds: how long
ago the pace reached the watermark's event time.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import time

import numpy as np

from mcjax.eventlog import files
from mcjax.eventlog import io as log_io
from mcjax.moment.config import MomentConfig
from mcjax.moment.events import ORACLE_EXPOSURES, Lookup
from mcjax.stream import rows as rows_lib
from mcjax.stream.engine import StreamConfig, StreamEngine
from mcjax.stream.sink import SPLITS, STATE_DIR, SampleSink

MARKS = ("build_info.json", STATE_DIR, *SPLITS)  # what an existing stream output holds


def open_source(spec: str, *, speed: float = 0.0, batch_rows: int = 16384):
  """A source from ``replay:LOG_DIR`` or ``redis://host:port/STREAM``."""
  if spec.startswith("replay:"):
    from mcjax.stream.replay import ReplaySource
    return ReplaySource(spec[len("replay:"):], speed=speed, batch_rows=batch_rows)
  if spec.startswith("redis://"):
    from mcjax.stream.redis_source import RedisSource
    return RedisSource(spec, batch_rows=batch_rows)
  raise ValueError(f"--source={spec!r}: expected replay:LOG_DIR or redis://host:port/STREAM")


def check_out(out_dir: str, reads: dict, overwrite: bool) -> str:
  """The output guard: ``out_dir`` apart from what is read; an existing folder is resumed
  when it holds a stream checkpoint, replaced with ``overwrite`` when it is a samples folder,
  else refused."""
  out_dir = os.path.abspath(out_dir)
  files.check_apart(reads, {"--out": out_dir})
  if not os.path.lexists(out_dir):
    return out_dir
  files.check_replaceable(out_dir, "--out", MARKS, "a samples folder")
  if overwrite:
    with files.staging(out_dir) as old:
      os.rename(out_dir, os.path.join(old, "replaced"))
  elif not os.path.isdir(os.path.join(out_dir, STATE_DIR)):
    raise FileExistsError(f"{out_dir} already exists and holds no stream checkpoint (pass "
                          "--overwrite to replace it)")
  return out_dir


def read_oracle(log_dir: str | None):
  """The oracle of a log folder for the evaluation records (None: no oracle)."""
  if not log_dir:
    return None
  table = log_io.read_oracle(log_dir, ORACLE_EXPOSURES)
  return None if table is None else Lookup.build(table, "oracle_exposures", "exposure_id")


def run(source, out_dir: str, cfg: MomentConfig, scfg: StreamConfig | None = None, *,
        oracle=None, checkpoint_s: float = 30.0, part_rows: int = 256 * 1024,
        progress_s: float = 10.0, speed: float = 0.0, log=print) -> dict:
  """Streams ``source`` into ``out_dir`` until it ends or a stop signal; returns the counts."""
  scfg = scfg or StreamConfig()
  meta = {"moment": dataclasses.asdict(cfg), "stream": dataclasses.asdict(scfg),
          "source": source.name}
  sink, saved = SampleSink.resume(out_dir, part_rows=part_rows, metadata=meta)
  dead = rows_lib.DeadLetters(sink.dead_letter_path)
  if saved is not None:
    if saved["config"] != [dataclasses.asdict(cfg), dataclasses.asdict(scfg)]:
      raise ValueError(f"--out={out_dir} holds a stream of another config "
                       f"({saved['config']}); pass --overwrite to start anew")
    engine = saved["engine"]
    dead.truncate(saved["dead_bytes"])
    dead.counts = engine.dead.counts
    if saved["finished"]:
      log(f"{out_dir}: the stream had ended; nothing to do")
      return {"counts": sink.publish(), "engine": engine.counts, "dead": dict(dead.counts)}
    source.seek(saved["position"])
    log(f"resumed from the checkpoint at watermark {_utc(engine.complete)} "
        f"({engine.counts['events_in']:,} events in)")
  else:
    engine = StreamEngine(cfg, scfg, oracle=oracle)
  engine.dead = dead
  stop = []
  old = {s: signal.signal(s, lambda *_: stop.append(1)) for s in (signal.SIGTERM, signal.SIGINT)}

  def checkpoint(finished: bool) -> None:
    position = source.position()
    sink.checkpoint({"engine": engine, "position": position, "dead_bytes": dead.tell(),
                     "finished": finished,
                     "config": [dataclasses.asdict(cfg), dataclasses.asdict(scfg)]})
    source.commit(position)
    sink.publish()

  start = last_ckpt = last_progress = time.monotonic()
  first = None  # (wall, event time) of the first event: where a paced source started
  lags = LagTrace()
  events0 = engine.counts["events_in"]
  samples0 = engine.counts["train"] + engine.counts["eval"]
  try:
    while not stop:
      batch = source.read(None, timeout_s=1.0)
      out = engine.finish() if batch is None else engine.push(batch)
      for split in SPLITS:
        sink.add(split, out[split])
      if batch is None:
        checkpoint(True)
        break
      now = time.monotonic()
      if first is None and engine.first_ts is not None:
        first = (now, engine.first_ts)
      lags.add(now - start, engine.complete, lag_s(engine, first, now, speed))
      if now - last_ckpt >= checkpoint_s:
        checkpoint(False)
        log(f"checkpoint at watermark {_utc(engine.complete)}")
        last_ckpt = now
      if now - last_progress >= progress_s:
        log(_progress(engine, now - start, events0, samples0, first, now, speed))
        last_progress = now
    else:
      checkpoint(False)
      log("stopped; checkpoint written")
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
    dead.close()
    source.close()
  log(_progress(engine, time.monotonic() - start, events0, samples0, None, 0.0, speed))
  return {"counts": {s: sum(p["num_samples"] for p in sink.parts[s]) for s in SPLITS},
          "engine": dict(engine.counts), "dead": dict(dead.counts),
          "state": engine.state.stats, "lag": lags.summary()}


def lag_s(engine, first, now: float, speed: float) -> float | None:
  """Wall seconds the watermark is behind a paced source's schedule (None unpaced, or before
  the first event): where the pace has got to in event time, less the watermark, / speed."""
  if speed <= 0 or first is None or engine.complete <= -2**62:
    return None
  due = first[1] + (now - first[0]) * speed * 1000.0
  return max(0.0, due - engine.complete) / 1000.0 / speed


class LagTrace:
  """The watermark lag of a paced run over wall time: every micro-batch's lag, and a point per
  wall second (elapsed s, watermark ms, lag s) for plots."""

  def __init__(self):
    self.all, self.points, self._next = [], [], 0.0

  def add(self, elapsed: float, watermark: int, lag: float | None) -> None:
    if lag is None:
      return
    self.all.append(lag)
    if elapsed >= self._next:
      self.points.append((round(elapsed, 3), int(watermark), round(lag, 4)))
      self._next = elapsed + 1.0

  def summary(self) -> dict:
    if not self.all:
      return {"samples": 0}
    a = np.asarray(self.all)
    return {"samples": len(a), "max_s": float(a.max()), "p50_s": float(np.median(a)),
            "p99_s": float(np.quantile(a, 0.99)), "end_s": float(a[-1]),
            "points": self.points}


def _utc(ms: int) -> str:
  if ms < 0:
    return "none yet"
  return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M:%S")


def _progress(engine, elapsed: float, events0: int, samples0: int, first, now, speed) -> str:
  events = engine.counts["events_in"] - events0
  samples = engine.counts["train"] + engine.counts["eval"] - samples0
  lag = lag_s(engine, first, now, speed)
  lag = "n/a" if lag is None else f"{lag:.2f} s"
  dead = ", ".join(f"{k} {v}" for k, v in sorted(engine.dead.counts.items())) or "0"
  return (f"events {engine.counts['events_in']:,} ({events / max(elapsed, 1e-9):,.0f}/s), "
          f"samples train {engine.counts['train']:,} eval {engine.counts['eval']:,} "
          f"({samples / max(elapsed, 1e-9):,.0f}/s), watermark {_utc(engine.complete)}, "
          f"lag {lag}, dead letters: {dead}")
