"""The continuous trainer: the batch trainer's train step, fed by emitted samples as they come.

``ContinuousTrainer(cfg, workdir)`` builds what the batch trainer builds (the mesh of
``config.mesh`` and ``mcjax.runtime.build``: the train state born sharded, the jitted sparse
train step; same losses, same row updates, same config) and ``run(source, ...)``
consumes a stream of ``Emitted`` tables (``mcjax.train.emitted``) in order:

* training samples are padded (``contract.batch.pad_table``) into a buffer; a batch of
  ``train.batch_size`` rows is taken as soon as the buffer holds one, or, when fewer rows are
  waiting, once the stream's event time is ``realtime.max_wait_ms`` past the oldest waiting
  row's (at 1x real time: wall ms; at speed S, S times fewer) (the batch is then filled with zero rows of weight 0: one compiled
  step, no recompiles);
* evaluation records are handed to ``score_eval(emitted)`` when they arrive, before any later
  sample is trained on (the caller scores them with the version being served);
* after every step, the step's metrics are checked on the host: a non-finite loss, gradient
  or parameter norm raises ``Diverged`` naming the step and every loss term, before that
  state can be published or checkpointed;
* ``publish(state, step)`` is called every ``realtime.publish_every_steps`` steps and whenever
  ``realtime.publish_every_s`` of wall time have passed since the last publish (and at the
  end); it returns the wall time at which the version became the one served, from which
  each sample's freshness is measured (``Freshness``);
* every ``train.checkpoint_every_steps`` steps (and at the end) the train state, the stream
  position (the first training row not trained yet and the first evaluation table not scored
  yet), the count and checksum of the samples trained and the caller's ``extra()`` are saved
  as one Orbax checkpoint (``workdir/ckpt``): a run killed at any point and restarted resumes
  from it and ends with the same parameters, every sample trained exactly once.

Several processes (``mcjax.distributed``) run it the way they run the batch trainer: every
process reads the same stream (a deterministic source: the replay of the log through the
stream engine, or ``build_samples`` replayed) and cuts the same global batches, and feeds only
its slice of each, the contiguous rows ``[p * B / P, (p + 1) * B / P)`` of process p of P
(``contract.batch.to_device``). Every decision that involves another process is taken
together: a publish due by wall time is decided on process 0's clock
(``distributed.first``), a stop (Ctrl-C, SIGTERM) by any process (``distributed.any_of``,
before each emitted table); the step metrics and ``digest()`` are gathered to every host
(``distributed.host``); the Orbax checkpoint is written by all processes together (Orbax's
multi-process protocol). Pacing (``realtime.speed``) only delays a process: what is trained,
scored and published never depends on it, and the processes meet at each step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mcjax import distributed, runtime
from mcjax.contract.batch import to_device
from mcjax.runtime import mesh as mesh_lib
from mcjax.contract import batch as batch_lib
from mcjax.samples.table import table_slice
from mcjax.train import RunError
from mcjax.train.emitted import Emitted

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B1))


class Diverged(RunError):
  """A train step produced non-finite metrics: nothing after it is published."""


def sample_keys(table: dict) -> np.ndarray:
  """One uint64 per training sample (exposure, kind, emission time), for the checksum of what
  was trained: the sum of the keys, so a sample trained twice or skipped changes it."""
  with np.errstate(over="ignore"):
    return (table["exposure_id"].astype(np.uint64) * _MIX[0]
            ^ table["sample_ts_ms"].astype(np.uint64) * _MIX[1]
            ^ table["kind"].astype(np.uint64) * _MIX[2])


def checksum(keys: np.ndarray, start: int = 0) -> int:
  with np.errstate(over="ignore"):
    return int((np.uint64(start) + np.sum(keys, dtype=np.uint64)) % np.uint64(2**63))


@dataclasses.dataclass
class Position:
  """Where the trainer is in the emitted stream (saved with every checkpoint)."""
  item: int = 0          # the first training row not trained: row ``row`` of item ``item``
  row: int = 0
  eval_next: int = 0     # evaluation tables before this index have been scored
  step: int = 0
  trained_rows: int = 0
  checksum: int = 0


def percentiles(x) -> dict:
  x = np.asarray(x, np.float64)
  if not len(x):
    return {"n": 0}
  return {"n": int(len(x)), "p50": round(float(np.percentile(x, 50)), 4),
          "p99": round(float(np.percentile(x, 99)), 4), "max": round(float(x.max()), 4)}


class Freshness:
  """Wall seconds from a sample's arrival to its training step's end (emitted -> trained),
  from there to the swap that served a version holding it (trained -> served), and end to
  end; per published version and over every sample."""

  def __init__(self):
    self.pending = []  # (arrival_s [n], trained_s) since the last publish
    self.parts = []    # (emitted->trained, trained->served) arrays per version
    self.versions = []

  def trained(self, arrival_s: np.ndarray, trained_s: float) -> None:
    self.pending.append((arrival_s, trained_s))

  def served(self, version: int, step: int, served_s: float) -> dict:
    arr = np.concatenate([a for a, _ in self.pending]) if self.pending else np.zeros(0)
    tr = np.concatenate([np.full(len(a), t) for a, t in self.pending]) if self.pending \
        else np.zeros(0)
    self.pending = []
    self.parts.append((tr - arr, served_s - tr))
    rec = {"version": version, "step": step, "served_s": served_s,
           "emitted_to_trained_s": percentiles(tr - arr),
           "trained_to_served_s": percentiles(served_s - tr),
           "end_to_end_s": percentiles(served_s - arr)}
    self.versions.append(rec)
    return rec

  def summary(self) -> dict:
    a = np.concatenate([p[0] for p in self.parts]) if self.parts else np.zeros(0)
    b = np.concatenate([p[1] for p in self.parts]) if self.parts else np.zeros(0)
    return {"emitted_to_trained_s": percentiles(a), "trained_to_served_s": percentiles(b),
            "end_to_end_s": percentiles(a + b), "versions": len(self.versions)}

  def end_to_end(self) -> np.ndarray:
    return np.concatenate([p[0] + p[1] for p in self.parts]) if self.parts else np.zeros(0)


class _Buffer:
  """Padded training rows waiting for a step, with where each came from."""

  def __init__(self):
    self.pieces = []  # [item index, first row, padded dict, keys, arrival_s, clock_ms]
    self.rows = 0

  def add(self, e: Emitted, lo: int, padded: dict, keys: np.ndarray) -> None:
    self.pieces.append([e.index, lo, padded, keys, e.arrival_s, e.clock_ms])
    self.rows += len(keys)

  def take(self, n: int):
    """Up to n rows: (padded parts, keys, arrival_s per row)."""
    parts, keys, arrival = [], [], []
    while n and self.pieces:
      piece = self.pieces[0]
      k = min(n, len(piece[3]))
      parts.append({name: v[:k] for name, v in piece[2].items()})
      keys.append(piece[3][:k])
      arrival.append(np.full(k, piece[4]))
      if k == len(piece[3]):
        self.pieces.pop(0)
      else:
        piece[1] += k
        piece[2] = {name: v[k:] for name, v in piece[2].items()}
        piece[3] = piece[3][k:]
      n -= k
      self.rows -= k
    return parts, np.concatenate(keys), np.concatenate(arrival)


class ContinuousTrainer:
  """See the module docstring."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | None = None):
    self.cfg, t, self.rt = cfg, cfg.train, cfg.realtime
    self.mesh = mesh_lib.make_mesh(mesh_lib.check_layout(cfg))
    rt = runtime.build(cfg, self.mesh)  # the batch trainer's model, state, shardings, step
    self.model_def, self.state, self.shardings = rt.model_def, rt.state, rt.shardings
    self.train_step = rt.train_step
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.batch_size, self.sv, self.lv = int(t.batch_size), int(cfg.moment.sv_hist_len), \
        int(cfg.moment.lv_hist_len)
    # this process's rows of every global batch (the batch trainer's slicing, mcjax.samples.loader)
    self.local_rows = self.batch_size // jax.process_count()
    self.first_row = jax.process_index() * self.local_rows
    self._step_fn = self.train_step
    self.pos, self.freshness = Position(), Freshness()
    self.ledger = []  # (step, exposure ids trained in it): the prequential bookkeeping
    self.lags = []    # wall seconds each emitted table waited past its due time
    self.steps_this_run = 0
    self.ckpt = None
    if workdir:
      self.ckpt = ocp.CheckpointManager(
          os.path.join(os.path.abspath(workdir), "ckpt"),
          options=ocp.CheckpointManagerOptions(max_to_keep=2,
                                               enable_async_checkpointing=False))

  # ------------------------------------------------------------------ checkpoint
  def restore(self) -> dict | None:
    """Loads the latest checkpoint (state, position); returns its ``extra`` (None: none)."""
    step = self.ckpt.latest_step() if self.ckpt else None
    if step is None:
      return None
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          self.state)
    got = self.ckpt.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()))
    self.state = got["state"]
    progress = dict(got["progress"])
    self.pos = Position(**progress["position"])
    return progress.get("extra", {})

  def save(self, extra: dict) -> None:
    if self.ckpt is None:
      return
    progress = {"position": dataclasses.asdict(self.pos), "extra": extra}
    if self.pos.step in self.ckpt.all_steps():  # the end, right after a periodic save: the
      self.ckpt.delete(self.pos.step)           # position moved on, the state did not
    self.ckpt.save(self.pos.step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(self.state), progress=ocp.args.JsonSave(progress)),
        force=True)
    self.ckpt.wait_until_finished()

  # ------------------------------------------------------------------------ steps
  def warmup(self) -> None:
    """Compiles the train step ahead of the stream (so the first samples do not wait for
    the compiler): the compiled executable is what every step then calls."""
    zero = batch_lib.zero_batch(self.local_rows, self.sv, self.lv)
    batch = to_device(self.batch_sharding, zero, self.batch_size)
    self._step_fn = self.train_step.lower(self.state, batch).compile()

  def _step(self, parts: list, keys: np.ndarray, arrival: np.ndarray, exposure: np.ndarray):
    n = len(keys)
    local = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    if n < self.batch_size:
      zero = batch_lib.zero_batch(self.batch_size - n, self.sv, self.lv)
      local = {name: np.concatenate([v, zero[name]]) for name, v in local.items()}
    mine = slice(self.first_row, self.first_row + self.local_rows)
    batch = to_device(self.batch_sharding, {k: v[mine] for k, v in local.items()},
                      self.batch_size)
    self.state, m = self._step_fn(self.state, batch)
    m = {k: float(v) for k, v in distributed.host(m).items()}
    step = self.pos.step + 1
    bad = {k: v for k, v in m.items() if not np.isfinite(v)}
    if bad or m.get("learning/exchange_overflow", 0) > 0:
      terms = sorted(k for k in m if k.startswith("loss/") or k == "learning/loss")
      norms = [k for k in sorted(bad) if k not in terms]
      raise Diverged(f"step {step}: training diverged: non-finite "
                     + ", ".join(f"{k}={m[k]}" for k in terms + norms))
    self.pos.step = step
    self.pos.trained_rows += n
    self.pos.checksum = checksum(keys, self.pos.checksum)
    self.freshness.trained(arrival, time.time())
    self.ledger.append((step, exposure))
    self.steps_this_run += 1
    return m

  # ------------------------------------------------------------------------- loop
  def run(self, source, *, score_eval, publish, extra=lambda: {}, on_step=None,
          kill_at_step: int | None = None, should_stop=lambda: False,
          interrupt_at_step: int | None = None) -> dict:
    """Trains on ``source`` (``read(start)`` -> Emitted) to its end; see the module
    docstring. ``on_step(step, metrics, rows)`` is called after each step;
    ``kill_at_step`` / ``interrupt_at_step`` (tests) send this process SIGKILL / SIGINT right
    after that step. When
    ``should_stop()`` (e.g. after Ctrl-C) the loop stops before the next emitted table: the
    rows waiting for a step are left untrained, the position saved points at them, the last
    version is published and a checkpoint written (a rerun goes on from there); the summary
    then has ``stopped`` True."""
    rt, buf = self.rt, _Buffer()
    every_ckpt = int(self.cfg.train.checkpoint_every_steps)
    every_steps, every_s = int(rt.publish_every_steps), float(rt.publish_every_s)
    max_wait_ms = float(rt.max_wait_ms)
    last = {"step": self.pos.step, "wall": time.time(), "version": 0}
    resume_item, resume_row = self.pos.item, self.pos.row

    def maybe_publish(force: bool = False):
      new = self.pos.step > last["step"]
      due = force or (every_steps > 0 and self.pos.step - last["step"] >= every_steps)
      if new and not due and every_s > 0:  # on process 0's clock (the same in every process)
        due = distributed.first(time.time() - last["wall"] >= every_s)
      if due and new or (force and last["version"] == 0):
        last["version"], served_s = publish(self.state, self.pos.step)
        self.freshness.served(last["version"], self.pos.step, served_s)
        last["step"], last["wall"] = self.pos.step, time.time()

    def train(upto_item: int):
      parts, keys, arrival = buf.take(self.batch_size)
      exposure = np.concatenate([p["exposure_id"] for p in parts])
      m = self._step(parts, keys, arrival, exposure)
      if buf.pieces:
        self.pos.item, self.pos.row = buf.pieces[0][0], buf.pieces[0][1]
      else:
        self.pos.item, self.pos.row = upto_item, 0
      if on_step is not None:
        on_step(self.pos.step, m, len(keys))
      maybe_publish()
      if self.pos.step % every_ckpt == 0:
        self.save(extra())
      if kill_at_step is not None and self.pos.step >= kill_at_step:
        os.kill(os.getpid(), signal.SIGKILL)
      if interrupt_at_step is not None and self.pos.step == interrupt_at_step:
        os.kill(os.getpid(), signal.SIGINT)

    stopped = False
    for e in source.read(resume_item):
      if distributed.any_of(should_stop()):
        stopped = True
        break
      while buf.rows and e.clock_ms - buf.pieces[0][5] > max_wait_ms:
        if getattr(source, "speed", 0):  # paced: the wall time the batch was due
          _sleep_until(buf.pieces[0][4] + max_wait_ms / 1000 / source.speed)
        train(e.index)
      maybe_publish()
      _sleep_until(e.arrival_s)
      self.lags.append(max(0.0, time.time() - e.arrival_s))
      if e.split == "eval":
        if e.index >= self.pos.eval_next:
          score_eval(e)
          self.pos.eval_next = e.index + 1
        continue
      lo = resume_row if e.index == resume_item else 0
      table = e.table if lo == 0 else table_slice(e.table, lo, len(e.table["kind"]))
      padded = batch_lib.pad_table(table, self.sv, self.lv)
      padded["weight"] = np.ones(len(table["kind"]), np.float32)
      buf.add(e, lo, padded, sample_keys(table))
      while buf.rows >= self.batch_size:
        train(e.index + 1)
    if not stopped:
      end = len(source)
      while buf.rows:
        train(end)
      self.pos.item, self.pos.row = end, 0
      self.pos.eval_next = max(self.pos.eval_next, end)
    maybe_publish(force=True)
    self.save(extra())
    return {**self.summary(), "stopped": stopped}

  def digest(self) -> str:
    """sha256 of every array of the train state (parameters, tables, optimizer states), in
    tree order: equal digests, bit-identical states."""
    h = hashlib.sha256()
    for x in jax.tree.leaves(distributed.host(self.state)):
      h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:32]

  def summary(self) -> dict:
    return {"steps": self.pos.step, "state_sha256": self.digest(), "steps_this_run": self.steps_this_run,
            "trained_rows": self.pos.trained_rows, "checksum": self.pos.checksum,
            "freshness": self.freshness.summary(), "lag_s": percentiles(self.lags)}

  def close(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()


def _sleep_until(wall_s: float) -> None:
  dt = wall_s - time.time()
  if dt > 0:
    time.sleep(dt)
