"""train_and_evaluate: one run of a config on a samples folder, read top to bottom.

Sections: data (the samples, the time plan, the run folder), mesh and state (born sharded),
steps (jitted train and eval steps), restore (the workdir's latest checkpoint), the loop over
the plan's windows (score the window's evaluation records, then train on the samples emitted
in it; in offline_tvt, validate after every epoch), checkpoint, metrics. Every process runs
the same code: each reads its slice of every global batch, and the step never branches on the
device count. The launchers build the samples folder first (``mcjax.train.data.prepare``).

Resume: checkpoints hold the train state and the current window's Grain iterator, and
``progress/step_<step>.json`` says where in the plan they are; every scored window's
predictions are kept in ``preds/``; so a run killed at any point continues from its latest
checkpoint and ends with the same parameters and metrics as an uninterrupted run.
``train.max_steps`` caps training: the run checkpoints where it stopped, still scores the
remaining windows (with the stopped model, or in offline_tvt the best validated one), and a
rerun of the workdir with a larger ``max_steps`` continues from there. The workdir records
what it is a run of and refuses another config or other data (``mcjax.train.rundir``).

Each step's metrics reach the host one step late (``StepLog``): a non-finite loss, gradient
norm or parameter norm stops the run there with a ``RunError`` naming the step, the loss terms
and the parameters that are not finite; non-finite predictions stop it before metrics.json.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from mcjax import config as mcconfig
from mcjax import distributed, losses, metrics
from mcjax.model import build_model
from mcjax.samples.schema import TASKS
from mcjax.train import RunError
from mcjax.train import data as data_lib
from mcjax.train import mesh as mesh_lib
from mcjax.train import partition
from mcjax.train import plan as plan_lib
from mcjax.train import rundir
from mcjax.train import state as state_lib
from mcjax.train import step as step_lib


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, samples_dir: str, *,
                       overwrite: bool = False) -> dict:
  """Runs ``cfg`` on ``samples_dir`` in ``workdir`` (``overwrite``: its run files deleted
  first); returns and writes metrics.json. RunError: the workdir holds another run or is in
  use, the config does not fit the data, or training diverged."""
  mcconfig.validate(cfg)
  shape, t = check_layout(cfg), cfg.train

  # ------------------------------------------------------------------------------ data
  data = data_lib.Data(cfg, samples_dir)
  plan = plan_lib.make_plan(t, data.eval_ts, data.train_ts)
  with rundir.RunDir(workdir, rundir.identity(cfg, data.fingerprint()), cfg,
                     save_every=t.checkpoint_every_steps, overwrite=overwrite) as run:

    # -------------------------------------------------------------------- mesh & state
    mesh = mesh_lib.make_mesh(shape)
    optim = state_lib.optim_config(cfg)
    model_def, state, shardings = state_lib.create_train_state(
        functools.partial(build_model, cfg.model), mesh, optim, seed=cfg.seed,
        max_replicated_bytes=int(cfg.mesh.max_replicated_mb * 2**20),
        **partition.from_config(cfg.mesh))

    # --------------------------------------------------------------------------- steps
    loss_fn = functools.partial(losses.compute_loss, cfg=cfg.loss)
    train_step = step_lib.make_train_step(
        model_def, optim, loss_fn, shardings, mesh,
        dense_below_rows=cfg.model.embedding.large_table_rows)
    scorer = Scorer(step_lib.make_eval_step(model_def, loss_fn, shardings, mesh), data, mesh)

    # ------------------------------------------------------------------------- restore
    progress, it = run.latest() or rundir.Progress(), None
    if run.saved is not None:  # resume inside the checkpoint's window (none: all done)
      it = data.train_batches(plan, progress.window)
      state = run.restore(state, progress.step, it)

    # ---------------------------------------------------------------------------- loop
    log, stopped = StepLog(cfg, plan, run, mesh, progress.step), None
    for w in plan.windows[progress.window:]:
      progress.window = w.index
      if it is None:  # entering w (not resuming inside it): score its records, then train
        if w.n_eval:
          with log.paused(state):
            model = run.restore_best(state, progress) if plan.valid else state
            log.window(w, run.save_preds(w.index, scorer(model, w.eval_lo, w.eval_hi)))
        it = None if stopped else data.train_batches(plan, w.index)
      for local in batches_until(it, t.max_steps, progress):
        state, m = train_step(state, scorer.put(local, t.batch_size))
        progress.step += 1
        log.step(progress.step, m, local, state)
        epoch = plan.valid and plan.epoch_end(w, progress.step, t.batch_size)
        if epoch:  # offline_tvt: validate; the best epoch's state will score the test
          validate_epoch(run, log, scorer, plan.valid, progress, state, epoch, t.select_metric)
        if epoch or progress.step % t.checkpoint_every_steps == 0:
          log.flush(state)
          run.save(progress, state, it)
      if it is not None and 0 <= t.max_steps <= progress.step:
        stopped = (w.index, it)
      it = None

    # ---------------------------------------------------------------------- checkpoint
    log.flush(state)
    # stopped by max_steps: a longer rerun continues from here; else the data ran out: done
    progress.window, it = stopped or (len(plan.windows), None)
    run.save(progress, state, it)
    run.finish()

    # ------------------------------------------------------------------------- metrics
    result = compute_metrics(cfg, plan, run.load_preds(len(plan.windows)), progress)
    result["train"] = log.close(progress.step, result)
    run.write_json("metrics.json", result)
  return result


def batches_until(it, max_steps: int, progress: rundir.Progress):
  """The batches of ``it`` (none if it is None) while ``progress.step`` is below
  ``max_steps`` (-1: no cap); checked before reading, so a stopped ``it`` stays on the batch
  a longer rerun trains on next."""
  while it is not None and not 0 <= max_steps <= progress.step:
    local = next(it, None)
    if local is None:
      return
    yield local


def validate_epoch(run: rundir.RunDir, log: StepLog, scorer: Scorer, valid: plan_lib.Window,
                   progress: rundir.Progress, state, epoch: int, select_metric: str) -> None:
  """offline_tvt, at the end of an epoch: scores the validation records, records their
  metrics in ``progress`` and keeps the state when the epoch is the best so far."""
  with log.paused(state):
    record = log.valid(epoch, progress.step, scorer(state, valid.eval_lo, valid.eval_hi))
  if progress.offer(record, select_metric):
    run.save_best(progress.step, state)


def check_layout(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """The resolved mesh shape; refuses layouts the batch cannot be split over."""
  try:
    shape = mesh_lib.resolve_shape(tuple(cfg.mesh.shape), jax.device_count())
  except ValueError as e:
    raise ValueError(f"config.mesh.shape: {e}") from None
  for key in ("batch_size", "eval_batch_size"):
    b = cfg.train[key]
    if b % shape[0]:
      raise ValueError(f"config.train.{key}={b} is not divisible by the data axis "
                       f"({shape[0]} of mesh {shape})")
    if b % jax.process_count():
      raise ValueError(f"config.train.{key}={b} is not divisible by the "
                       f"{jax.process_count()} processes")
  return shape


class Scorer:
  """``scorer(state, lo, hi)``: the evaluation records [lo, hi) scored by ``state``, as host
  arrays (every process); ``put`` copies a process-local batch to the mesh."""

  def __init__(self, eval_step, data: data_lib.Data, mesh):
    self.eval_step, self.data = eval_step, data
    self.sharding = mesh_lib.batch_sharding(mesh)

  def put(self, local: dict, global_rows: int) -> dict:
    return self.data.to_device(self.sharding, local, global_rows)

  def __call__(self, state, lo: int, hi: int) -> dict:
    b = self.data.cfg.train.eval_batch_size
    probs = [distributed.gather(self.eval_step(state, self.put(local, b))[0])
             for local in (self.data.eval_batches(lo, hi) if hi > lo else ())]
    probs = np.concatenate(probs)[:hi - lo] if probs else np.zeros((0, len(TASKS)))
    bad = int(np.sum(~np.isfinite(probs).all(axis=1)))
    if bad:
      raise RunError(f"step {int(jax.device_get(state.step))}: {bad} of {hi - lo} predictions "
                     f"of evaluation records [{lo}, {hi}) are not finite")
    return self.data.eval_records(lo, hi, probs)


class StepLog:
  """The loop's metrics on the host. A step's metrics are fetched one step late (the device
  keeps the next step queued), checked at once for non-finite values, shown on the progress
  bar and written to TensorBoard every ``log_every_steps`` steps with the throughput
  ``perf/step_time_s``, ``perf/examples_per_s`` and ``perf/examples_per_s_per_chip``. The
  clock skips the first step of the process (its compile: ``first_step_s``) and every
  ``paused`` span (scoring evaluation or validation records: ``scoring_s``)."""

  def __init__(self, cfg, plan: plan_lib.Plan, run: rundir.RunDir, mesh, step: int):
    self.cfg, self.every = cfg, cfg.train.log_every_steps
    self.replicated = mesh_lib.replicated(mesh)
    self.writer = None
    if run.main:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(run.path, "tb"))
    self.bar = tqdm(total=plan.total_steps(cfg.train.batch_size), initial=step, unit="step",
                    desc=f"train {cfg.name}", disable=not run.main, smoothing=0.05)
    self.pending = None  # (step, device metrics, examples) of the newest step
    self.start = self.mark = time.perf_counter()  # mark: a step seen done, or a pause ended
    self.total = {"steps": 0, "examples": 0, "first_step_s": None, "scoring_s": 0.0,
                  "timed_steps": 0, "timed_s": 0.0, "timed_examples": 0}
    self.since_log = [0, 0.0, 0]  # timed steps, seconds, examples since the last log

  def step(self, step: int, metrics: dict, local: dict, state) -> None:
    examples = int(local["weight"].sum()) * jax.process_count()
    previous, self.pending = self.pending, (step, metrics, examples)
    if previous is not None:
      self._host(*previous, state)

  def flush(self, state) -> None:
    if self.pending is not None:
      self._host(*self.pending, state)
      self.pending = None

  def _host(self, step: int, metrics: dict, examples: int, state) -> None:
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    bad = {k: v for k, v in m.items() if not np.isfinite(v)}
    if bad:
      raise RunError(self._nonfinite(step, bad, state))
    self.total["steps"] += 1
    self.total["examples"] += examples
    if self.total["first_step_s"] is None:  # compiled in this step: not timed
      self.total["first_step_s"] = now - self.mark
    else:
      for i, x in enumerate((1, now - self.mark, examples)):
        self.since_log[i] += x
    self.mark = now
    self.bar.update(1)
    if step % self.every == 0:
      self.bar.set_postfix(loss=f"{m['learning/loss']:.4f}")
      self._write({**m, **self._perf(*self.since_log)}, step)
      for key, x in zip(("timed_steps", "timed_s", "timed_examples"), self.since_log):
        self.total[key] += x
      self.since_log = [0, 0.0, 0]

  def _perf(self, steps: int, seconds: float, examples: int) -> dict:
    if not steps or seconds <= 0:
      return {}
    return {"perf/step_time_s": seconds / steps, "perf/examples_per_s": examples / seconds,
            "perf/examples_per_s_per_chip": examples / seconds / jax.device_count()}

  def _nonfinite(self, step: int, bad: dict, state) -> str:
    """One line: the step, its non-finite loss terms and norms, and the parameters (or
    tables) of the newest state that hold non-finite values (else the largest one)."""
    self.bar.close()
    order = sorted(bad, key=lambda k: (not k.startswith("loss/"), k))
    stats = jax.jit(lambda s: (jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), s),
                               jax.tree.map(lambda x: jnp.max(jnp.abs(x), initial=0), s)),
                    out_shardings=self.replicated)({"params": state.params,
                                                    "tables": state.tables})
    finite, top = (jax.tree_util.tree_flatten_with_path(t)[0] for t in jax.device_get(stats))
    name = lambda k: jax.tree_util.keystr(k, simple=True, separator="/")  # noqa: E731
    where = [name(k) for k, ok in finite if not ok]
    at = f"; at step {int(jax.device_get(state.step))}"
    if where:
      more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
      at += f" non-finite: {', '.join(where[:3])}{more}"
    else:
      k, value = max(top, key=lambda kv: float(kv[1]))
      at += f" the largest |value| is {float(value):.3g} in {name(k)}"
    return (f"step {step}: training diverged: non-finite "
            f"{', '.join(f'{k}={bad[k]}' for k in order)}{at}")

  @contextlib.contextmanager
  def paused(self, state):
    """Stops the clock (after the queued step is done) while the body runs."""
    self.flush(state)
    t0 = time.perf_counter()
    yield
    self.mark = time.perf_counter()
    self.total["scoring_s"] += self.mark - t0

  def window(self, w: plan_lib.Window, preds: dict) -> None:
    ctr = metrics.auc(preds["labels"][:, 0], preds["probs"][:, 0]) if len(preds["probs"]) else None
    if ctr is not None and np.isfinite(ctr):
      self._write({"eval/ctr_auc_window": ctr}, w.index)

  def valid(self, epoch: int, step: int, preds: dict) -> dict:
    """The validation record of an epoch: its step and metrics per task."""
    overall = metrics.evaluate(preds["probs"], preds["labels"], preds["mask"],
                               preds["user_id"])["overall"]
    self._write({f"valid/{task}_{k}": v for task, r in overall.items()
                 for k, v in r.items() if k in ("auc", "logloss") and v is not None}, step)
    return {"epoch": int(epoch), "step": step, **overall}

  def _write(self, scalars: dict, step: int) -> None:
    if self.writer is not None:
      for name, value in scalars.items():
        self.writer.add_scalar(name, float(value), step)

  def close(self, step: int, result: dict) -> dict:
    """metrics.json's ``train`` block; writes the final evaluation scalars."""
    self.bar.close()
    for key, x in zip(("timed_steps", "timed_s", "timed_examples"), self.since_log):
      self.total[key] += x
    self._write({f"eval/{task}_auc": r["auc"] for task, r in result["overall"].items()
                 if r.get("auc") is not None}, step)
    if self.writer is not None:
      self.writer.close()
    tot, r = self.total, lambda x: None if x is None else round(x, 3)  # noqa: E731
    perf = self._perf(tot["timed_steps"], tot["timed_s"], tot["timed_examples"])
    return {"steps": step, "steps_this_run": tot["steps"], "examples_this_run": tot["examples"],
            "wall_s": r(time.perf_counter() - self.start), "first_step_s": r(tot["first_step_s"]),
            "scoring_s": r(tot["scoring_s"]), "timed_steps": tot["timed_steps"],
            "timed_s": r(tot["timed_s"]), **{k: float(f"{v:.4g}") for k, v in perf.items()}}


def compute_metrics(cfg, plan: plan_lib.Plan, preds: dict[int, dict],
                    progress: rundir.Progress) -> dict:
  """metrics.json: overall, per slice, per window; offline_tvt adds each epoch's validation
  record (``valid``) and the one chosen (``selected``) whose state scored the test (README)."""
  acc = metrics.WindowedMetrics()
  window_rows = []
  for w in plan.windows:
    p = preds.get(w.index)
    if p is None or len(p["probs"]) == 0:
      continue
    slices = metrics.standard_slices(
        {"in_highlight": p["in_highlight"], "lv_len": p["lv_len"]},
        cfg.train.live_sparse_threshold)
    acc.add(w.index, p["probs"], p["labels"], p["mask"], p["user_id"], slices)
    window_rows.append(w)
  overall = acc.overall()
  out_windows = []
  for w, m in zip(window_rows, acc.per_window()):
    p = preds[w.index]
    hl = p["in_highlight"]
    row = {"start_ms": w.start_ms, "end_ms": w.end_ms, "n": int(len(p["probs"])),
           "highlight_share": float(np.mean(hl == 1)) if (hl >= 0).any() else None}
    row.update(m["overall"])
    out_windows.append(row)
  out = {"config": cfg.name, "mode": cfg.train.mode, "overall": overall["overall"],
         "slices": overall.get("slices", {}), "windows": out_windows}
  if plan.valid is not None:
    out.update(valid=progress.valid, selected=progress.best)
  return out
