"""Serving benchmark: request latency and batch throughput of ``mcjax.serve.Scorer``.

    python -m launch.bench --mode=serve --workdir=W --log=LOG [--candidates=100]

On one device, with a trained workdir and its event log, at a time T (``at_share`` of the
log's time range):

* **buffer**: an ``EventBuffer`` holding the log's events before T; each request (one user,
  ``candidates`` lives, at T + up to 1 s) is scored end to end by ``Scorer.score``: features
  from the buffer with the engine's code (crowd, histories, side tables), padding and host
  transform, the device call (bucket 128 for 100 candidates), ranking. p50 / p99 over
  ``requests`` requests, after ``warmup()`` and a few untimed requests.
* **prebuilt**: the same requests with their batches built beforehand: ``score_batch`` and
  the argsort only (what a feature-serving system in front of the model would leave); and
  **features alone** (``RequestBuilder.batch``). The three are timed interleaved, request by
  request, so a busy machine's load changes hit them alike.
* **batch**: candidates/s of ``score_batch`` over ``batch_rows`` logged exposures (chunks of
  the largest bucket), features prebuilt and features built from the log with it.
* **refresh**: an append of the next second of events, then the engine context's rebuild (the
  first request after an append pays it; see ``EventBuffer``).
"""

from __future__ import annotations

import time

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.moment.events import LogTables, read_tables
from mcjax.serve import BUCKETS, EventBuffer, Scorer


def _percentiles(seconds: list[float]) -> dict:
  ms = np.asarray(seconds) * 1e3
  return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
          "mean_ms": float(ms.mean()), "n": len(ms)}


def run(workdir: str, log: str, *, candidates: int = 100, requests: int = 300,
        batch_rows: int = 16_384, at_share: float = 0.8, buckets=BUCKETS, seed: int = 0) -> dict:
  """The numbers of the module docstring, as a dict."""
  rng = np.random.default_rng(seed)
  tables = read_tables(log)
  ts = tables.events["ts_ms"].to_numpy()
  at = int(ts.min() + at_share * (ts.max() - ts.min()))
  start = time.perf_counter()
  buffer = EventBuffer(LogTables(tables.events.filter(pa.array(ts < at)), tables.users,
                                  tables.authors, tables.lives, tables.videos))
  scorer = Scorer.from_workdir(workdir, log=buffer, devices=jax.devices()[:1], buckets=buckets)
  scorer.requests.context  # noqa: B018 (builds the engine context)
  setup_s = time.perf_counter() - start
  start = time.perf_counter()
  scorer.warmup()
  compile_s = time.perf_counter() - start

  # requests: users with a live exposure near T, the lives closest to being on air at T
  ctx = scorer.requests.context
  near = np.argsort(np.abs(ctx.exposure_ts - at))[:max(requests, 1) * 4]
  users = rng.choice(ctx.user[near], requests)
  lives = tables.lives
  off_air = np.maximum(lives["start_ms"].to_numpy() - at, at - lives["end_ms"].to_numpy())
  pool = lives["live_id"].to_numpy()[np.argsort(off_air, kind="stable")]
  slate = pool[:candidates]  # distinct lives (a request ranks each candidate once)
  times = at + rng.integers(0, 1000, requests)
  built = [scorer.requests.batch(u, q, slate) for u, q in zip(users, times)]
  for i in range(3):
    scorer.score(users[i], times[i], slate)
  buffer_s, prebuilt_s, features_s = [], [], []
  for u, q, batch in zip(users, times, built):  # interleaved: load changes hit all three
    t0 = time.perf_counter()
    scorer.score(u, q, slate)
    t1 = time.perf_counter()
    _, score = scorer.score_batch(batch)
    np.argsort(-score, kind="stable")
    t2 = time.perf_counter()
    scorer.requests.batch(u, q, slate)
    t3 = time.perf_counter()
    buffer_s.append(t1 - t0)
    prebuilt_s.append(t2 - t1)
    features_s.append(t3 - t2)

  # batch scoring of logged exposures
  rows = rng.choice(ctx.n, min(batch_rows, ctx.n), replace=False)
  args = (ctx.user[rows], ctx.exposure_ts[rows], ctx.live_id[rows])
  t0 = time.perf_counter()
  batch = scorer.requests.batch(*args)
  batch_features_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  scorer.score_batch(batch)
  model_s = time.perf_counter() - t0

  # refresh: append the next second of events, rebuild the context
  events = tables.events
  nxt = events.filter(pc.and_(pc.greater_equal(events["ts_ms"], at),
                              pc.less(events["ts_ms"], at + 1000)))
  buffer.append(nxt)
  t0 = time.perf_counter()
  scorer.requests.context  # noqa: B018
  refresh_s = time.perf_counter() - t0
  n = len(rows)
  return {
      "workdir": workdir, "config": scorer.cfg.get("name"), "step": scorer.step,
      "device": jax.devices()[0].device_kind, "buckets": list(scorer.buckets),
      "candidates": len(slate), "requests": requests, "at_ms": at,
      "buffer_events": buffer.num_events,
      "setup_s": setup_s, "compile_all_buckets_s": compile_s,
      "request_from_buffer": _percentiles(buffer_s),
      "request_prebuilt": _percentiles(prebuilt_s),
      "request_features_only": _percentiles(features_s),
      "batch": {"rows": n, "features_s": batch_features_s, "model_s": model_s,
                "candidates_per_s_prebuilt": n / model_s,
                "candidates_per_s_with_features": n / (batch_features_s + model_s)},
      "refresh": {"appended_events": len(nxt), "rebuild_s": refresh_s},
  }


def table(result: dict) -> str:
  """A human table of ``run``'s result."""
  b, p, batch = result["request_from_buffer"], result["request_prebuilt"], result["batch"]
  f = result["request_features_only"]
  rows = [
      ["config / step / device", f"{result['config']} / {result['step']} / {result['device']}"],
      ["buckets", str(result["buckets"])],
      [f"1 x {result['candidates']} request, features from buffer: p50 / p99 ms",
       f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f}"],
      [f"1 x {result['candidates']} request, prebuilt features: p50 / p99 ms",
       f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}"],
      [f"1 x {result['candidates']} request, features alone: p50 / p99 ms",
       f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f}"],
      [f"batch of {batch['rows']}: candidates/s prebuilt",
       f"{batch['candidates_per_s_prebuilt']:,.0f}"],
      [f"batch of {batch['rows']}: candidates/s with features",
       f"{batch['candidates_per_s_with_features']:,.0f}"],
      [f"buffer refresh after +{result['refresh']['appended_events']} events (s)",
       f"{result['refresh']['rebuild_s']:.2f}"],
      ["buffer events / setup s / compile s (all buckets)",
       f"{result['buffer_events']:,} / {result['setup_s']:.1f} / "
       f"{result['compile_all_buckets_s']:.1f}"],
  ]
  return "\n".join(f"{k:58s} {v}" for k, v in rows)
