"""``StepLog``: the training loop's metrics on the host, one step late, with the throughput
clock (compile and scoring excluded) and the divergence check."""

from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mcjax import metrics
from mcjax.train import RunError
from mcjax.runtime import exchange
from mcjax.runtime import mesh as mesh_lib
from mcjax.train import plan as plan_lib
from mcjax.train import rundir


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
    if m.get("learning/exchange_overflow", 0) > 0:
      self.bar.close()
      raise RunError(exchange.overflow_error(
          step, int(m["learning/exchange_overflow"]), self.cfg.mesh.exchange_capacity,
          effect="their rows were read as zeros and not updated"))
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
