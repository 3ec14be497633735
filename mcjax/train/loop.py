"""train_and_evaluate: one run of a config on a samples folder, read top to bottom.

Sections: data (the samples, the time plan, the run folder), mesh, state and steps
(``mcjax.runtime.build``: the state born sharded, the jitted train and eval steps), restore
(the workdir's latest checkpoint), the loop over the plan's windows (score the window's
evaluation records, then train on the samples emitted in it, each batch put on the devices by
``mcjax.contract.batch.to_device``; in offline_tvt, validate after every epoch), checkpoint,
metrics. Every process runs
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

import functools

import ml_collections

from mcjax import config as mcconfig
from mcjax import runtime
from mcjax.contract import batch as batch_lib
from mcjax.runtime import mesh as mesh_lib
from mcjax.train import data as data_lib
from mcjax.train import evaluate
from mcjax.train import plan as plan_lib
from mcjax.train import rundir
from mcjax.train.steplog import StepLog


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, samples_dir: str, *,
                       overwrite: bool = False) -> dict:
  """Runs ``cfg`` on ``samples_dir`` in ``workdir`` (``overwrite``: its run files deleted first);
  writes and returns metrics.json. RunError: a busy or foreign workdir, bad fit, divergence."""
  mcconfig.validate(cfg)
  shape, t = mesh_lib.check_layout(cfg), cfg.train

  # ------------------------------------------------------------------------------ data
  data = data_lib.Data(cfg, samples_dir)
  plan = plan_lib.make_plan(t, data.eval_ts, data.train_ts)
  with rundir.RunDir(workdir, rundir.identity(cfg, data.fingerprint()), cfg,
                     save_every=t.checkpoint_every_steps, overwrite=overwrite) as run:

    # ------------------------------------------------------------ mesh, state & steps
    mesh = mesh_lib.make_mesh(shape)
    rt = runtime.build(cfg, mesh)  # born sharded; jitted train and eval steps
    state, train_step = rt.state, rt.train_step
    evaluator = evaluate.Evaluator(rt.eval_step, data, mesh)
    to_device = functools.partial(batch_lib.to_device, mesh_lib.batch_sharding(mesh),
                                  global_rows=t.batch_size)

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
            log.window(w, run.save_preds(w.index, evaluator(model, w.eval_lo, w.eval_hi)))
        it = None if stopped else data.train_batches(plan, w.index)
      for local in batches_until(it, t.max_steps, progress):
        state, m = train_step(state, to_device(local))
        progress.step += 1
        log.step(progress.step, m, local, state)
        epoch = plan.valid and plan.epoch_end(w, progress.step, t.batch_size)
        if epoch:  # offline_tvt: validate; the best epoch's state will score the test
          evaluate.validate_epoch(run, log, evaluator, plan, progress, state, epoch,
                                  t.select_metric)
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
    result = evaluate.compute_metrics(cfg, plan, run.load_preds(len(plan.windows)), progress)
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
