"""The real-time loop: emitted samples -> continuous trainer -> served versions.

``run_loop(cfg, source, workdir)`` takes the stream engine's output (``StreamEmitted``; with
the engine's checkpoint saved beside the trainer's, one unit) or ``build_samples`` output
replayed as emitted, and wires ``mcjax.train.continuous.ContinuousTrainer`` to a
``Scorer`` that serves the newest published version (``mcjax.serve.versions``):

* every evaluation record is scored by the version being served when it is emitted (its
  exposure time), through the serving ``Scorer``, before any sample emitted at or after it is
  trained on (the records that arrive under one version are scored together before it is
  replaced: ``EvalQueue``); each scored record keeps the version number and the train step
  that version holds (``preds/part_*.npz``, saved with the trainer's checkpoints);
* at the end, metrics.json has the batch modes' blocks (overall, slices, windows of
  ``train.window_min``, ranking: ``mcjax.train.evaluate.compute_metrics``) plus ``realtime``:
  freshness per version and in aggregate, lag behind the replay schedule, bytes per version
  (whole and delta) and, with ``realtime.request_rate``, the request load's latency;
* ``publish_dir`` also writes every version for other processes (``DirPublisher``: whole, or
  with ``realtime.publish_delta`` as the changed rows with a whole base every
  ``realtime.full_every`` versions); metrics.json's ``realtime.publish_dir`` has the bytes
  each took on disk;
* ``realtime.request_rate`` > 0 runs a request generator beside the loop (``RequestLoad``).

Several processes (``mcjax.distributed``; ``check_processes`` says what they cannot do: a
Redis source, the request load) each run the whole loop on the same source, training on their
slice of every batch (``ContinuousTrainer``); every process scores the evaluation records with
the shared mesh and keeps them, publishes each version (``DirPublisher``: gathered from all,
written by process 0) and takes part in each checkpoint. Process 0 alone writes the files of
the workdir: ``preds/``, the stream snapshot (``stream_state/``; every process restores from
it: they all run the same engine on the same events), metrics.json, ``trained.npz``.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time

import jax
import numpy as np

from mcjax import distributed, metrics
from mcjax.contract.batch import host_batch
from mcjax.contract.schema import MODEL_INPUTS
from mcjax.eventlog.files import atomic_write
from mcjax.contract import batch as batch_lib
from mcjax.serve.scorer import Scorer
from mcjax.serve.versions import DirPublisher, Versions
from mcjax.train import evaluate, plan as plan_lib
from mcjax.train.continuous import ContinuousTrainer, percentiles
from mcjax.train.emitted import ReplayEmitted, StreamEmitted

_REC_KEYS = ("probs", "labels", "mask", "user_id", "in_highlight", "lv_len", "exposure_id",
             "sample_ts_ms", "live_id", "oracle_p_click", "version", "version_step",
             "scored_s")


class PredStore:
  """The scored evaluation records, saved in parts that the checkpoint counts (``write``
  False: kept in memory only, the saved parts read on restore; the other processes of a
  multi-process loop, whose process 0 writes them)."""

  def __init__(self, folder: str | None, write: bool = True):
    self.folder, self.parts, self.pending, self.write = folder, [], [], write
    if folder and write:
      os.makedirs(folder, exist_ok=True)

  def restore(self, n_parts: int) -> None:
    """Keeps the first ``n_parts`` saved parts (those a checkpoint counts), deletes later ones."""
    for path in sorted(glob.glob(os.path.join(self.folder, "part_*.npz"))):
      if int(os.path.basename(path)[5:11]) >= n_parts:
        if self.write:
          os.remove(path)
      else:
        with np.load(path) as z:
          self.parts.append({k: z[k] for k in z.files})

  def add(self, fields: dict, probs: np.ndarray, version, scored_s: float) -> dict:
    """Scored records: ``fields`` are ``record_fields`` of their tables."""
    rec = {**fields, "probs": probs,
           "version": np.full(len(probs), version.number, np.int64),
           "version_step": np.full(len(probs), version.step, np.int64),
           "scored_s": np.full(len(probs), scored_s)}
    self.pending.append(rec)
    return rec

  def flush(self) -> int:
    """Saves the pending records as one part; returns the number of parts."""
    if self.pending:
      part = {k: np.concatenate([r[k] for r in self.pending]) for k in _REC_KEYS}
      self.pending = []
      if self.folder and self.write:
        path = os.path.join(self.folder, f"part_{len(self.parts):06d}.npz")
        np.savez(path + ".tmp.npz", **part)
        os.replace(path + ".tmp.npz", path)
      self.parts.append(part)
    return len(self.parts)

  def all(self) -> dict:
    self.flush()
    if not self.parts:
      return {}
    return {k: np.concatenate([p[k] for p in self.parts]) for k in _REC_KEYS}


def realtime_metrics(cfg, recs: dict, eval_ts: np.ndarray, train_ts: np.ndarray) -> dict:
  """metrics.json's blocks of the batch modes, windows of ``train.window_min`` minutes."""
  windows = plan_lib.online_windows(eval_ts, train_ts, int(cfg.train.window_min * 60_000))
  starts = np.array([w.start_ms for w in windows], np.int64)
  which = np.searchsorted(starts, recs["sample_ts_ms"], side="right") - 1
  preds = {}
  for w in windows:
    sel = np.flatnonzero(which == w.index)
    if len(sel):
      preds[w.index] = {k: recs[k][sel] for k in ("probs", "labels", "mask", "user_id",
                                                  "in_highlight", "lv_len", "exposure_id")}
  out = evaluate.compute_metrics(cfg, plan_lib.Plan("online", tuple(windows)), preds, None)
  out["mode"] = "realtime"
  return out


def record_fields(table: dict) -> dict:
  """What metrics.json and the audits keep of an evaluation table's records."""
  return {"labels": table["labels"], "mask": table["label_mask"], "user_id": table["user_id"],
          "in_highlight": table["in_highlight"], "lv_len": np.diff(table["lv_offsets"]),
          "exposure_id": table["exposure_id"], "sample_ts_ms": table["sample_ts_ms"],
          "live_id": table["live_id"], "oracle_p_click": table["oracle_p_click"]}


class EvalQueue:
  """Evaluation records waiting to be scored by the version served when they arrived. The
  served version changes only at a publish, so the records that arrive between two publishes
  are scored together, by that version, right before the next swap (``score``; also at every
  checkpoint and when ``max_rows`` wait): the same scores as one call per record, in a few
  large calls."""

  def __init__(self, scorer: Scorer, versions: Versions, preds: PredStore, sv: int, lv: int,
               max_rows: int = 4096):
    self.scorer, self.versions, self.preds = scorer, versions, preds
    self.sv, self.lv, self.max_rows = sv, lv, max_rows
    self.padded, self.fields, self.rows = [], [], 0

  def add(self, table: dict) -> None:
    self.padded.append(host_batch(batch_lib.pad_table(table, self.sv, self.lv)))
    self.fields.append(record_fields(table))
    self.rows += len(table["kind"])
    if self.rows >= self.max_rows:
      self.score()

  def score(self) -> None:
    if not self.rows:
      return
    cat = lambda parts, k: np.concatenate([p[k] for p in parts])  # noqa: E731
    batch = {k: cat(self.padded, k) for k in MODEL_INPUTS}
    fields = {k: cat(self.fields, k) for k in self.fields[0]}
    v = self.versions.current  # the version served since these records arrived
    probs, _ = self.scorer.score_batch(batch, weights=v.weights)
    self.preds.add(fields, probs, v, time.time())
    self.padded, self.fields, self.rows = [], [], 0


class RequestLoad:
  """Scoring requests at ``rate`` per wall second beside the loop: at the stream's current
  event time, a user of an exposure emitted in the ten minutes before it and the lives
  exposed then (on air; ``observe`` is given every evaluation table as it arrives), features
  from the log (``RequestBuilder``, events before that time), scored with the served version.
  Latency: from the request's scheduled time to its answer; a request that fails is counted
  as dropped."""

  WINDOW_MS = 600_000

  def __init__(self, scorer: Scorer, versions: Versions, log_dir: str, rate: float,
               candidates: int, now_ms):
    from mcjax.serve.requests import RequestBuilder  # pylint: disable=g-import-not-at-top
    from mcjax import config as mcconfig  # pylint: disable=g-import-not-at-top
    self.builder = RequestBuilder(log_dir, mcconfig.moment_config(scorer.cfg))
    self.scorer, self.versions, self.rate, self.candidates = scorer, versions, rate, candidates
    self.now_ms = now_ms
    self.recent, self.lock = [], threading.Lock()  # (ts, users, lives) of recent records
    self.latency, self.versions_seen, self.dropped, self.errors = [], set(), 0, []
    self._stop = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True)

  def observe(self, table: dict) -> None:
    ts = table["sample_ts_ms"]
    with self.lock:
      self.recent.append((ts, table["user_id"], table["live_id"]))
      while self.recent and self.recent[0][0][-1] < ts[-1] - self.WINDOW_MS:
        self.recent.pop(0)

  def start(self) -> None:
    self.thread.start()

  def _run(self) -> None:
    rng, k, t0 = np.random.default_rng(0), 0, time.time()
    while not self._stop.is_set():
      due = t0 + k / self.rate
      if due > time.time():
        time.sleep(due - time.time())
      k += 1
      try:
        t = int(self.now_ms())
        with self.lock:
          recent = list(self.recent)
        if not recent:
          continue
        ts, users, lives = (np.concatenate([r[i] for r in recent]) for i in range(3))
        near = np.flatnonzero((ts < t) & (ts >= t - self.WINDOW_MS))
        if not len(near):
          continue
        user = users[rng.choice(near)]
        cands = np.unique(lives[near])[:self.candidates]
        v = self.versions.current
        self.scorer.score_batch(self.builder.batch(user, t, cands), weights=v.weights)
        self.latency.append(time.time() - due)
        self.versions_seen.add(v.number)
      except Exception as e:  # pylint: disable=broad-except
        self.dropped += 1
        self.errors.append(f"{type(e).__name__}: {e}")

  def stop(self) -> dict:
    self._stop.set()
    self.thread.join()
    return {"rate_per_s": self.rate, "requests": len(self.latency) + self.dropped,
            "dropped": self.dropped, "latency_s": percentiles(self.latency),
            "versions_served": len(self.versions_seen), "first_error": (self.errors or [None])[0]}


def check_processes(cfg, spec: str, processes: int) -> None:
  """Raises ValueError for what the loop cannot do in ``processes`` > 1 processes: a Redis
  source (its consumer group would split the stream between them, where every process must
  read all of it) and the request load (its thread would score on the shared mesh at times of
  its own: a collective the other processes never join)."""
  if processes <= 1:
    return
  if spec.startswith("redis://"):
    raise ValueError(f"--source={spec} with {processes} processes: a Redis consumer group "
                     "would split the stream between them; use --source=replay or batch, or "
                     "one process")
  if float(cfg.realtime.request_rate) > 0:
    raise ValueError(f"config.realtime.request_rate={cfg.realtime.request_rate} with "
                     f"{processes} processes: the request load runs in one process only; set "
                     "it to 0 (score versions from --publish_dir in another process instead)")


def publish_summary(writer: DirPublisher) -> dict:
  """metrics.json's ``publish_dir``: how the versions were written, the bytes each took on
  disk and the wall seconds its write took (median per kind; ``versions``: per version)."""
  med = {}
  for kind in ("base", "delta"):
    mine = [h for h in writer.history if h["kind"] == kind]
    for field in ("bytes", "write_s"):
      med[f"{kind}_{field}_median"] = float(np.median([h[field] for h in mine])) if mine else None
  return {"delta": writer.delta, "full_every": writer.full_every, **med,
          "versions": writer.history}


def stream_source(cfg, spec: str, log_dir: str, until_min: float = 0.0) -> StreamEmitted:
  """``StreamEmitted`` of ``cfg`` over a replay of ``log_dir`` (``spec`` "replay", paced at
  ``realtime.speed``) or a Redis stream (``spec`` redis://host:port/STREAM); the oracle of
  ``log_dir`` fills the records' oracle fields."""
  from mcjax import config as mcconfig  # pylint: disable=g-import-not-at-top
  from mcjax.stream import run as run_lib  # pylint: disable=g-import-not-at-top
  rt = cfg.realtime
  source = run_lib.open_source(f"replay:{log_dir}" if spec == "replay" else spec,
                               speed=float(rt.speed))
  return StreamEmitted(source, mcconfig.moment_config(cfg), oracle=run_lib.read_oracle(log_dir),
                       tick_ms=int(rt.tick_ms), speed=float(rt.speed),
                       until_ms=int(until_min * 60_000))


def run_loop(cfg, source, workdir: str, *, log_dir: str | None = None,
             publish_dir: str | None = None, kill_at_step: int | None = None,
             interrupt_at_step: int | None = None, progress=print,
             progress_every_s: float = 5.0) -> dict:
  """Runs the loop on ``source`` in ``workdir`` (resuming from its checkpoint); writes and
  returns metrics.json. ``source``: a ``StreamEmitted`` (the stream engine over a replay or a
  broker) or ``build_samples`` output (a dict of "train" and "eval" tables, replayed as
  emitted by ``ReplayEmitted``)."""
  rt = cfg.realtime
  os.makedirs(workdir, exist_ok=True)
  if isinstance(source, dict):
    source = ReplayEmitted(source, tick_ms=int(rt.tick_ms), speed=float(rt.speed))
  stream = source if isinstance(source, StreamEmitted) else None
  main = distributed.is_main()  # process 0 writes the run's files; every process computes
  check_processes(cfg, "", jax.process_count())
  trainer = ContinuousTrainer(cfg, workdir)
  extra = trainer.restore() or {}  # every process: process 0's stream snapshot
  snapshots = os.path.join(workdir, "stream_state")
  if stream is not None and extra.get("stream_state"):
    with open(os.path.join(snapshots, extra["stream_state"]), "rb") as f:
      stream.restore(f.read())
  preds = PredStore(os.path.join(workdir, "preds"), write=main)
  preds.restore(int(extra.get("pred_parts", 0)))
  versions = Versions(first_number=int(extra.get("versions", 0)))
  writer = DirPublisher(publish_dir, delta=bool(rt.publish_delta),
                        full_every=int(rt.full_every)) if publish_dir else None

  def publish(state, step):
    if queue is not None:
      queue.score()  # the records that arrived under the version being replaced
    v = versions.publish(state, step)
    if writer is not None:
      writer.write(v)
    return v.number, v.published_s

  queue = None
  publish(trainer.state, trainer.pos.step)  # what is served before the first step
  scorer = Scorer(cfg, trainer.model_def, versions.current.weights, trainer.mesh)
  queue = EvalQueue(scorer, versions, preds, trainer.sv, trainer.lv)
  now = {"event_ms": source.first_ms or 0, "rows": 0, "t": time.time(), "steps": 0,
         "mark": 0.0}
  load = None

  def score_eval(e):
    queue.add(e.table)
    now["event_ms"] = e.event_ms
    if load is not None:
      load.observe(e.table)

  def checkpoint_extra():
    queue.score()
    out = {"pred_parts": preds.flush(), "versions": versions.next_number}
    if stream is not None:  # the engine, its source position and the items not yet trained
      name = f"step_{trainer.pos.step:09d}.pkl"
      blob = stream.snapshot(trainer.pos.item)  # every process (the same engine state)
      if main:
        os.makedirs(snapshots, exist_ok=True)
        atomic_write(os.path.join(snapshots, name), blob)
        for old in sorted(os.listdir(snapshots))[:-3]:  # the checkpoints keep the last two
          os.remove(os.path.join(snapshots, old))
      out["stream_state"] = name
    return out

  def labelled(recs: dict) -> dict:
    if stream is None or not recs:
      return recs
    recs = dict(recs)
    recs["labels"], recs["mask"], found = stream.join_labels(recs["exposure_id"])
    recs["mask"] = recs["mask"] * found[:, None]
    return recs

  def on_step(step, m, rows):
    now["rows"] += rows
    now["steps"] += 1
    t = time.time()
    if progress and t - now["mark"] >= progress_every_s:
      now["mark"] = t
      recent = preds.parts + preds.pending  # the last 5,000 records with their labels
      recs = labelled({k: np.concatenate([r[k] for r in recent])
                       for k in ("labels", "probs", "mask", "exposure_id")} if recent else {})
      known = np.flatnonzero(recs["mask"][:, 0] > 0)[-5000:] if recs else np.zeros(0, int)
      y = recs["labels"][known, 0] if recs else np.zeros(0)
      p = recs["probs"][known, 0] if recs else np.zeros(0)
      auc = metrics.auc(y, p) if len(y) and 0 < y.sum() < len(y) else float("nan")
      dt = max(t - now["t"], 1e-9)
      wm = "" if stream is None else (
          f"  {(stream.engine.counts['events_in'] - now['events0']) / dt:,.0f} events/s  "
          f"watermark lag "
          f"{_lag(stream):.2f} s")
      progress(f"step {step}{wm}  {now['rows'] / dt:,.0f} samples/s  {now['steps'] / dt:.1f} "
               f"steps/s  version {versions.current.number} (step {versions.current.step})  "
               f"lag {trainer.lags[-1] if trainer.lags else 0:.2f} s  recent CTR AUC "
               f"{auc:.4f}  loss {m['learning/loss']:.4f}")

  trainer.warmup()  # compile before the stream starts: its clock starts after
  scorer.warmup()
  if float(rt.request_rate) > 0 and log_dir:
    load = RequestLoad(scorer, versions, log_dir, float(rt.request_rate),
                       int(rt.request_candidates), lambda: now["event_ms"])
    load.start()
  distributed.sync("realtime-start")  # the processes' replay schedules start together
  start = now["t"] = time.time()
  now["events0"] = stream.engine.counts["events_in"] if stream is not None else 0
  stop = []  # Ctrl-C / SIGTERM: stop at the next table, checkpoint, report what ran
  old = {sig: signal.signal(sig, lambda *_: stop.append(1))
         for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    summary = trainer.run(source, score_eval=score_eval, publish=publish,
                          extra=checkpoint_extra, on_step=on_step,
                          kill_at_step=kill_at_step, should_stop=lambda: bool(stop),
                          interrupt_at_step=interrupt_at_step)
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
    load_result = load.stop() if load is not None else None
    trainer.close()
  if summary["stopped"] and progress:
    progress(f"stopped at step {summary['steps']}; checkpoint written (a rerun goes on from "
             "there); metrics and report of what ran so far")
  wall = time.time() - start
  recs = labelled(preds.all())
  eval_ts = np.sort(recs["sample_ts_ms"]) if recs else np.zeros(0, np.int64)
  out = realtime_metrics(cfg, recs, eval_ts, eval_ts)
  span_s = (int(eval_ts[-1]) - int(eval_ts[0])) / 1000 if len(eval_ts) else 0.0
  whole = [h["bytes"]["whole"] for h in versions.history[1:]]
  delta = [h["bytes"]["delta"] for h in versions.history[1:]]
  out["realtime"] = {
      **summary, "wall_s": round(wall, 3), "logged_s": span_s,
      "speed_factor": round(span_s / wall, 2) if wall > 0 else None,
      "samples_per_s": round(summary["trained_rows"] / wall, 1) if wall > 0 else None,
      "config": {k: rt[k] for k in rt},
      "source": "stream engine" if stream is not None else "build_samples replay",
      "bytes_per_version": {"whole_median": float(np.median(whole)) if whole else None,
                            "delta_median": float(np.median(delta)) if delta else None},
      "publish_dir": None if writer is None else publish_summary(writer),
      "requests": load_result, "versions": versions.history,
      "freshness_per_version": trainer.freshness.versions}
  if stream is not None:
    out["realtime"]["engine"] = {"counts": dict(stream.engine.counts),
                                 "dead": dict(stream.engine.dead.counts),
                                 "watermark_lag_s": stream.lags.summary()}
  if not main:
    return out
  atomic_write(os.path.join(workdir, "metrics.json"), json.dumps(out, indent=1, default=float))
  np.save(os.path.join(workdir, "freshness_e2e_s.npy"), trainer.freshness.end_to_end())
  if trainer.ledger:  # which step trained each sample (this run): the prequential audit
    np.savez(os.path.join(workdir, "trained.npz"),
             step=np.concatenate([np.full(len(x), s) for s, x in trainer.ledger]),
             exposure_id=np.concatenate([x for _, x in trainer.ledger]))
  return out


def _lag(stream) -> float:
  lags = stream.lags.all
  return lags[-1] if lags else 0.0
