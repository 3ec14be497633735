"""A scored example request inside a highlight moment: what the model is for, in one table.

    request = highlight_request("runs/default/world", after_ms=eval_start)
    ranked = Scorer.from_workdir("runs/default/full", log="runs/default/world").score(
        request.user_id, request.ts_ms, request.live_ids)

``highlight_request`` picks, from a simulated log's oracle (``_oracle/highlights.parquet``), the
strongest highlight that starts at or after ``after_ms`` (the evaluation period, so the model
has not trained on it) and asks at 40% of its span, mid-moment; the candidates are the lives on
air at that time (``lives.parquet`` start_ms <= t < end_ms), at most ``max_candidates``, the
highlight's live always among them; the user is one the platform did show that live during the
highlight after t (the one with the most live exposures before t, so the request has a
history). ``in_highlight`` marks each candidate that is inside one of its highlights at t.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import numpy as np
import pyarrow.compute as pc

from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.serve.scorer import Scorer


@dataclasses.dataclass(frozen=True)
class ExampleRequest:
  user_id: int
  ts_ms: int
  live_ids: np.ndarray       # [n] int64, the candidates on air at ts_ms
  in_highlight: np.ndarray   # [n] bool: the candidate is inside a highlight at ts_ms
  highlight_live: int
  highlight: tuple           # (start_ms, end_ms, strength) of the chosen highlight


def highlight_request(log_dir: str, *, after_ms: int = 0, max_candidates: int = 100,
                      seed: int = 0) -> ExampleRequest | None:
  """The example request of a simulated log (see the module docstring); None when the log has
  no oracle highlights, none starts at or after ``after_ms``, or nobody was shown the live."""
  hl = io.read_oracle(log_dir, "highlights.parquet")
  if hl is None or hl.num_rows == 0:
    return None
  hl = {k: hl.column(k).to_numpy() for k in ("live_id", "start_ms", "end_ms", "strength")}
  lives = io.read_side(log_dir, "lives.parquet")
  lives = {k: lives.column(k).to_numpy() for k in ("live_id", "start_ms", "end_ms")}
  events = io.read_events(log_dir, ["ts_ms", "user_id", "domain", "item_id", "event"])
  live_exp = events.filter(pc.and_(pc.equal(events["domain"], S.LIVE),
                                   pc.equal(events["event"], S.EXPOSURE)))
  ts, user, item = (live_exp.column(k).to_numpy() for k in ("ts_ms", "user_id", "item_id"))
  for i in np.argsort(-hl["strength"], kind="stable"):
    if hl["start_ms"][i] < after_ms:
      continue
    start, end, live = int(hl["start_ms"][i]), int(hl["end_ms"][i]), int(hl["live_id"][i])
    t = start + int(0.4 * (end - start))
    shown = np.unique(user[(item == live) & (ts >= t) & (ts < end)])
    if len(shown) == 0:
      continue
    before = ts < t
    counts = np.array([np.sum(before & (user == u)) for u in shown])
    chosen = int(shown[np.argmax(counts)])
    on_air = lives["live_id"][(lives["start_ms"] <= t) & (lives["end_ms"] > t)]
    others = np.setdiff1d(on_air, [live])
    rng = np.random.default_rng(seed)
    if len(others) > max_candidates - 1:
      others = np.sort(rng.choice(others, max_candidates - 1, replace=False))
    cands = np.concatenate([[live], others]).astype(np.int64)
    active = (hl["start_ms"] <= t) & (hl["end_ms"] > t)
    return ExampleRequest(chosen, t, cands, np.isin(cands, hl["live_id"][active]), live,
                          (start, end, float(hl["strength"][i])))
  return None


def scored_example(run_dir: str, log_dir: str, *, after_ms: int = 0, k: int = 5) -> dict | None:
  """``highlight_request`` scored by the run's final checkpoint: a JSON-able dict for the run
  report (``mcjax.report.example_section``); None when the log has no usable highlight."""
  req = highlight_request(log_dir, after_ms=after_ms)
  if req is None:
    return None
  ranked = Scorer.from_workdir(run_dir, log=log_dir).score(req.user_id, req.ts_ms,
                                                            req.live_ids)
  hot = dict(zip(req.live_ids.tolist(), req.in_highlight.tolist()))
  ranks = np.arange(1, len(ranked.live_ids) + 1)
  in_hl = np.array([hot[int(i)] for i in ranked.live_ids])
  when = datetime.datetime.fromtimestamp(req.ts_ms / 1000, datetime.timezone.utc)
  return {
      "run": os.path.basename(os.path.normpath(run_dir)), "user_id": req.user_id,
      "ts_ms": req.ts_ms, "time": when.strftime("%Y-%m-%d %H:%M:%S"),
      "into_s": (req.ts_ms - req.highlight[0]) / 1000, "highlight": req.highlight,
      "highlight_live": req.highlight_live, "n": len(req.live_ids),
      "n_in_highlight": int(in_hl.sum()),
      "highlight_rank": int(ranks[ranked.live_ids == req.highlight_live][0]),
      "median_rank_in_highlight": float(np.median(ranks[in_hl])),
      "median_rank_other": float(np.median(ranks[~in_hl])) if (~in_hl).any() else float("nan"),
      "top": [{"live_id": int(ranked.live_ids[i]), "in_highlight": bool(in_hl[i]),
               "ctr": float(ranked.prob("ctr")[i]), "lvtr": float(ranked.prob("lvtr")[i]),
               "score": float(ranked.ranking_score[i])} for i in range(min(k, len(ranks)))],
  }
