"""Stream engine speed and state size on a log, beside the batch engine on the same log.

    OMP_NUM_THREADS=1 taskset -c 0 python -m benchmarks.stream_engine --log=runs/default/world \
        --batch_rows=8192

Replays the log (``ReplaySource``, no pacing) through ``StreamEngine`` in this process, with no
output written, and reports events/s, the speed factor (logged time / wall time), the
engine's state (the bytes of its arrays: what a checkpoint holds) at its largest and at the
end, the process' peak resident memory, and the batch engine (``build_samples``) on the same
log with the ratio. Times are CPU seconds of this process (the wall time too): on a shared
machine they are what the engine itself costs. ``--profile`` prints the engine's hottest functions instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pickle
import pstats
import resource
import time

import numpy as np

from mcjax.moment import MomentConfig
from mcjax.moment.engine import build_samples
from mcjax.stream.engine import StreamEngine
from mcjax.stream.replay import ReplaySource
from mcjax.stream.run import read_oracle


DAY_MS = 86_400_000


def state_bytes(engine) -> int:
  return len(pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL))


def stream(log: str, batch_rows: int, cfg: MomentConfig, sample_every: int) -> dict:
  source = ReplaySource(log, batch_rows=batch_rows)
  engine = StreamEngine(cfg, oracle=read_oracle(log))
  samples, largest, steps, daily = 0, 0, 0, []
  first_ts = None
  start, cpu = time.perf_counter(), time.process_time()
  while (batch := source.read()) is not None:
    out = engine.push(batch)
    samples += sum(len(t["sample_ts_ms"]) for t in out.values() if t is not None)
    steps += 1
    if first_ts is None and engine.max_ts > -2**62:
      first_ts = engine.max_ts
    if steps % sample_every == 0:
      largest = max(largest, state_bytes(engine))
    if first_ts is not None and engine.complete - first_ts >= (len(daily) + 1) * DAY_MS:
      feats = engine.feats
      cache = sum(np.asarray(v).nbytes for v in feats.values()) if feats else 0
      daily.append((state_bytes(engine) / 2**20, cache / 2**20, len(engine.state.x),
                    len(engine.state.plays)))
  out = engine.finish()
  samples += sum(len(t["sample_ts_ms"]) for t in out.values() if t is not None)
  wall = time.perf_counter() - start
  cpu = time.process_time() - cpu
  span_s = (engine.max_ts - first_ts) / 1000.0
  return {"events": engine.counts["events_in"], "samples": samples, "wall_s": wall,
          "cpu_s": cpu, "events_per_s": engine.counts["events_in"] / cpu,
          "speed_factor": span_s / cpu,
          "state_mb_largest": max(largest, state_bytes(engine)) / 2**20,
          "state_mb_end": state_bytes(engine) / 2**20, "open_x": len(engine.state.x),
          "engine": engine, "daily": daily}


def request_times(engine, cfg: MomentConfig, n: int, candidates: int = 100) -> np.ndarray:
  """CPU milliseconds per request (one user, ``candidates`` lives, at the watermark) built
  from the engine's live state by ``mcjax.serve.requests.RequestBuilder``."""
  from mcjax.serve.requests import RequestBuilder
  builder = RequestBuilder(engine, cfg)
  builder.context  # noqa: B018 (the live context is built once per engine version)
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    user = rng.choice(engine.state.users)
    lives = rng.choice(engine.state.live_ids, candidates)
    start = time.process_time()
    builder.features(user, engine.complete, lives)
    out.append((time.process_time() - start) * 1000)
  return np.asarray(out)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--log", required=True)
  parser.add_argument("--batch_rows", type=int, default=8192)
  parser.add_argument("--state_every", type=int, default=50, help="measure the state every N "
                      "batches")
  parser.add_argument("--profile", action="store_true")
  parser.add_argument("--no_batch", action="store_true", help="skip the batch engine")
  parser.add_argument("--requests", type=int, default=0, help="time this many requests (100 "
                      "candidate lives each) from the live state at the end")
  args = parser.parse_args()
  cfg = MomentConfig()
  if args.profile:
    cProfile.runctx("stream(args.log, args.batch_rows, cfg, 10**9)", globals(), locals(),
                    "/tmp/stream.prof")
    pstats.Stats("/tmp/stream.prof").sort_stats("cumulative").print_stats(30)
    return
  got = stream(args.log, args.batch_rows, cfg, args.state_every)
  rss_stream = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"stream engine: {got['events']:,} events in {got['cpu_s']:.1f} s of CPU "
        f"({got['wall_s']:.1f} s wall) = "
        f"{got['events_per_s']:,.0f} events/s, {got['speed_factor']:,.0f}x real time; "
        f"{got['samples']:,} samples; state {got['state_mb_largest']:.1f} MB at most, "
        f"{got['state_mb_end']:.1f} MB at the end; peak RSS {rss_stream:,.0f} MB", flush=True)
  for day, (mb, cache, x, plays) in enumerate(got["daily"], 1):
    print(f"  after day {day}: state {mb:.1f} MB (features of open exposures {cache:.1f} MB), "
          f"{x:,} exposures, {plays:,} plays held")
  if args.requests:
    ms = request_times(got["engine"], cfg, args.requests)
    print(f"requests from the live state ({args.requests}, 100 candidates each), CPU: p50 "
          f"{np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms", flush=True)
  if not args.no_batch:
    start, cpu = time.perf_counter(), time.process_time()
    built = build_samples(args.log, cfg)
    batch_s, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = sum(len(built[s]["sample_ts_ms"]) for s in ("train", "eval"))
    print(f"batch engine (build_samples, in memory): {cpu:.1f} s of CPU ({batch_s:.1f} s "
          f"wall), {n:,} samples; stream / batch CPU time: {got['cpu_s'] / cpu:.1f}x")


if __name__ == "__main__":
  main()
