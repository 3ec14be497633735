"""Evaluation inside a run: ``Evaluator`` scores evaluation records with the train state,
``validate_epoch`` keeps offline_tvt's best epoch, ``compute_metrics`` writes metrics.json
(overall, per slice, per window, Ranking_Score's AUC, and the headroom to a simulated
world's oracle)."""

from __future__ import annotations

import jax
import numpy as np

from mcjax import distributed, metrics
from mcjax.contract import batch as batch_lib
from mcjax.contract.schema import TASKS
from mcjax.model import ranking_score
from mcjax.train import RunError
from mcjax.train import data as data_lib
from mcjax.runtime import exchange
from mcjax.runtime import mesh as mesh_lib
from mcjax.train import plan as plan_lib
from mcjax.train import rundir
from mcjax.train.steplog import StepLog


class Evaluator:
  """``evaluator(state, lo, hi)``: the evaluation records [lo, hi) scored by ``state``, as
  host arrays (every process). (Serving a trained run is ``mcjax.serve.Scorer``.)"""

  def __init__(self, eval_step, data: data_lib.Data, mesh):
    self.eval_step, self.data = eval_step, data
    self.sharding = mesh_lib.batch_sharding(mesh)

  def __call__(self, state, lo: int, hi: int) -> dict:
    b = self.data.cfg.train.eval_batch_size
    probs, dropped = [], 0
    for local in (self.data.eval_batches(lo, hi) if hi > lo else ()):
      batch_probs, m = self.eval_step(state, batch_lib.to_device(self.sharding, local, b))
      probs.append(distributed.gather(batch_probs))
      dropped += int(jax.device_get(m.get("eval/exchange_overflow", 0)))
    if dropped:
      raise RunError(exchange.overflow_error(
          int(jax.device_get(state.step)), dropped, self.data.cfg.mesh.exchange_capacity,
          of=f" of evaluation records [{lo}, {hi})"))
    probs = np.concatenate(probs)[:hi - lo] if probs else np.zeros((0, len(TASKS)))
    bad = int(np.sum(~np.isfinite(probs).all(axis=1)))
    if bad:
      raise RunError(f"step {int(jax.device_get(state.step))}: {bad} of {hi - lo} predictions "
                     f"of evaluation records [{lo}, {hi}) are not finite")
    return self.data.eval_records(lo, hi, probs)


def validate_epoch(run: rundir.RunDir, log: StepLog, evaluator: Evaluator,
                   plan: plan_lib.Plan, progress: rundir.Progress, state, epoch: int,
                   select_metric: str) -> None:
  """offline_tvt, at the end of an epoch: scores the validation records, records their
  metrics in ``progress`` and keeps the state when the epoch is the best so far."""
  with log.paused(state):
    preds = evaluator(state, plan.valid.eval_lo, plan.valid.eval_hi)
    record = log.valid(epoch, progress.step, preds)
  if progress.offer(record, select_metric):
    run.save_best(progress.step, state)


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
  parts = [preds[w.index] for w in window_rows]
  out = {"config": cfg.name, "mode": cfg.train.mode, "overall": overall["overall"],
         "slices": overall.get("slices", {}), "windows": out_windows,
         "ranking": ranking_metrics(cfg, parts)}
  room = headroom_metrics(cfg, parts)
  if room:
    out["headroom"] = room
  if plan.valid is not None:
    out.update(valid=progress.valid, selected=progress.best)
  return out


def headroom_metrics(cfg, parts: list[dict]) -> dict:
  """metrics.json's ``headroom`` (worlds with an oracle): the click model against the true
  p(click) and the oracle without its highlight or affinity term, overall and per slice
  (``metrics.headroom``); {} without an oracle (or for scored records of an older run)."""
  if not parts or any(k not in p for p in parts for k in metrics.ORACLE_FIELDS):
    return {}
  cat = {k: np.concatenate([p[k] for p in parts])
         for k in ("probs", "labels", "mask", "in_highlight", "lv_len",
                   *metrics.ORACLE_FIELDS)}
  t = TASKS.index("ctr")
  keep = cat["mask"][:, t] > 0
  cat = {k: v[keep] for k, v in cat.items()}
  slices = metrics.standard_slices({"in_highlight": cat["in_highlight"], "lv_len": cat["lv_len"]},
                                   cfg.train.live_sparse_threshold)
  return metrics.headroom_by_slice(cat["probs"][:, t], cat["labels"][:, t],
                                   {k: cat[k] for k in metrics.ORACLE_FIELDS}, slices)


def ranking_metrics(cfg, parts: list[dict]) -> dict:
  """metrics.json's ``ranking``: the AUC of Ranking_Score (``model.ranking``, as the scorer
  fuses it) against the click and long-view labels of every evaluation record, beside each
  task's own probability (``overall``)."""
  if not parts:
    return {}
  cat = {k: np.concatenate([p[k] for p in parts]) for k in ("probs", "labels", "mask")}
  score = np.asarray(ranking_score(cat["probs"], cfg.model.ranking))
  return {"fusion": cfg.model.ranking.fusion,
          "weights": {t: float(cfg.model.ranking.weights[t]) for t in TASKS},
          "auc": metrics.ranking_auc(score, cat["labels"], cat["mask"])}
