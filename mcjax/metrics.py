"""Ranking and calibration metrics on host (numpy), exact over a full evaluation window.

* :func:`auc`: rank-based ROC AUC, ties counted one half (sklearn's ``roc_auc_score``),
  optional sample weights.
* :func:`logloss`: mean log loss, probabilities clipped like sklearn's ``log_loss``.
* :func:`uauc`: mean over users with both classes of the per-user AUC.
* :func:`gauc`: per-user AUC weighted by the user's sample count, users with one class
  dropped (the FuxiCTR definition).
* :func:`evaluate`: all of them per task, overall and per slice, as a JSON-ready dict.
* :func:`standard_slices`: highlight and live-sparsity slices of an evaluation batch.
* :class:`WindowedMetrics`: per-window and exact overall metrics for the online loop.

Per-user AUCs use one lexsort by (user, score) and segment sums: no Python loop per user.
A metric that is undefined (a single class, no records) is NaN in the numeric functions and
None in :func:`evaluate`'s output.
"""

from __future__ import annotations

import numpy as np

from mcjax.contract.schema import TASKS

def _segment_starts(*keys: np.ndarray) -> np.ndarray:
  """Boolean [N]: True where any of the (sorted) keys changes, and at 0."""
  n = len(keys[0])
  start = np.zeros(n, bool)
  if n:
    start[0] = True
    for k in keys:
      start[1:] |= k[1:] != k[:-1]
  return start


def _grouped_auc_sorted(y, p, w, group):
  """Per-group weighted AUC of records sorted by (group, p).

  Returns (auc [G], n [G], pos [G], neg [G]) with G the number of groups in order of
  appearance; auc is NaN where a group lacks a class. Ties in p within a group count 1/2.
  """
  wp, wn = w * y, w * (1.0 - y)
  gstart = _segment_starts(group)
  tstart = _segment_starts(group, p)
  gid = np.cumsum(gstart) - 1                       # group of each record
  tid = np.cumsum(tstart) - 1                       # tie block of each record
  n_groups = int(gid[-1]) + 1 if len(gid) else 0
  tie_pos = np.bincount(tid, wp)
  tie_neg = np.bincount(tid, wn)
  tie_group = gid[tstart]
  # Negatives strictly below each tie block, within its group: a global exclusive cumsum
  # minus the value at the group's first tie block.
  cum_neg = np.cumsum(tie_neg) - tie_neg
  first_block = np.flatnonzero(_segment_starts(tie_group))  # [G]: first tie block per group
  below = cum_neg - cum_neg[first_block][tie_group]
  pairs = np.bincount(tie_group, tie_pos * (below + 0.5 * tie_neg), minlength=n_groups)
  pos = np.bincount(gid, wp, minlength=n_groups)
  neg = np.bincount(gid, wn, minlength=n_groups)
  n = np.bincount(gid, minlength=n_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc_g = np.where((pos > 0) & (neg > 0), pairs / (pos * neg), np.nan)
  return auc_g, n, pos, neg


def _as_arrays(y, p, weight=None):
  y = np.asarray(y, np.float64).ravel()
  p = np.asarray(p).ravel()
  if y.shape != p.shape:
    raise ValueError(f"labels {y.shape} and scores {p.shape} must have the same length")
  w = np.ones_like(y) if weight is None else np.asarray(weight, np.float64).ravel()
  if w.shape != y.shape:
    raise ValueError(f"weight {w.shape} must have the length of the labels {y.shape}")
  return y, p, w


def auc(y, p, weight=None) -> float:
  """ROC AUC with ties as in sklearn (average ranks); NaN if y holds a single class."""
  y, p, w = _as_arrays(y, p, weight)
  order = np.argsort(p, kind="stable")
  res, *_ = _grouped_auc_sorted(y[order], p[order], w[order], np.zeros(len(y), np.int8))
  return float(res[0]) if len(res) else float("nan")


def logloss(y, p, weight=None) -> float:
  """Mean log loss; p clipped to [eps, 1 - eps] with eps of p's float dtype (as sklearn)."""
  y, p, w = _as_arrays(y, p, weight)
  if not len(y):
    return float("nan")
  eps = np.finfo(p.dtype if p.dtype.kind == "f" else np.float64).eps
  p = np.clip(p, eps, 1 - eps).astype(np.float64)
  ll = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
  return float(np.sum(w * ll) / np.sum(w))


def base_rate_logloss(pos: float, n: float) -> float:
  """Logloss of predicting the positive rate pos / n for every record (the entropy of the
  labels): the calibration yardstick. A model whose logloss is above it does worse than a
  constant; far above it, it is being fed inputs it never trained on. NaN when n == 0."""
  if n <= 0:
    return float("nan")
  p = min(max(pos / n, 0.0), 1.0)
  if p in (0.0, 1.0):
    return 0.0
  return float(-(p * np.log(p) + (1.0 - p) * np.log1p(-p)))


def per_user_auc(y, p, user):
  """Per-user AUC: (auc [U], n [U]) over the users in ``user`` (NaN for one-class users)."""
  y, p, _ = _as_arrays(y, p)
  user = np.asarray(user).ravel()
  order = np.lexsort((p, user))
  res, n, _, _ = _grouped_auc_sorted(y[order], p[order], np.ones(len(y)), user[order])
  return res, n


def _user_means(auc_u, n_u):
  ok = ~np.isnan(auc_u)
  if not ok.any():
    return float("nan"), float("nan")
  return float(np.mean(auc_u[ok])), float(np.average(auc_u[ok], weights=n_u[ok]))


def uauc(y, p, user) -> float:
  """Mean per-user AUC over users having both classes; NaN if there is none."""
  return _user_means(*per_user_auc(y, p, user))[0]


def gauc(y, p, user) -> float:
  """Per-user AUC weighted by the user's sample count, one-class users dropped (FuxiCTR)."""
  return _user_means(*per_user_auc(y, p, user))[1]


def _none_if_nan(x: float):
  return None if np.isnan(x) else float(x)


def _task_metrics(y, p, user, by_p, by_user) -> dict:
  """Metrics of one subset, given its records already sorted by p and by (user, p)."""
  n, pos = int(len(y)), int(np.sum(y))
  if n == 0:
    return {"auc": None, "uauc": None, "gauc": None, "logloss": None, "base_logloss": None,
            "n": 0, "pos": 0}
  ones = np.ones(n)
  a, *_ = _grouped_auc_sorted(y[by_p], p[by_p], ones, np.zeros(n, np.int8))
  auc_u, n_u, _, _ = _grouped_auc_sorted(y[by_user], p[by_user], ones, user[by_user])
  u, g = _user_means(auc_u, n_u)
  return {"auc": _none_if_nan(a[0]), "uauc": _none_if_nan(u), "gauc": _none_if_nan(g),
          "logloss": _none_if_nan(logloss(y, p)),
          "base_logloss": _none_if_nan(base_rate_logloss(pos, n)), "n": n, "pos": pos}


def evaluate(probs, labels, mask, user_id, slices: dict | None = None,
             tasks=TASKS) -> dict:
  """Metrics per task, overall and per slice.

  Args:
    probs, labels, mask: [N, T] arrays; a record counts for a task where ``mask > 0``.
    user_id: [N] user ids (for UAUC / GAUC).
    slices: name -> boolean [N] selecting the slice's records, or None.
    tasks: the T task names, in column order.

  Returns:
    ``{"overall": {task: {"auc", "uauc", "gauc", "logloss", "n", "pos"}},
    "slices": {name: {task: {...}}}}`` with Python floats/ints; an AUC that is undefined
    (one class) is None.
  """
  probs, labels, mask = np.asarray(probs), np.asarray(labels, np.float64), np.asarray(mask)
  user_id = np.asarray(user_id).ravel()
  expected = (len(user_id), len(tasks))
  for name, arr in (("probs", probs), ("labels", labels), ("mask", mask)):
    if arr.shape != expected:
      raise ValueError(f"{name} has shape {arr.shape}, expected [N, T] = {expected} "
                       f"(N from user_id, T tasks {tuple(tasks)})")
  slices = dict(slices or {})
  for name, sel in slices.items():
    if np.shape(sel) != user_id.shape:
      raise ValueError(f"slice {name!r} has shape {np.shape(sel)}, expected {user_id.shape}")
  report = {"overall": {}, "slices": {name: {} for name in slices}}
  for t, task in enumerate(tasks):
    keep = mask[:, t] > 0
    y, p, user = labels[keep, t], probs[keep, t], user_id[keep]
    by_p = np.argsort(p, kind="stable")
    by_user = np.lexsort((p, user))
    report["overall"][task] = _task_metrics(y, p, user, by_p, by_user)
    for name, sel in slices.items():
      s = np.asarray(sel, bool)[keep]
      # A subset of a sorted order is still sorted: filter the orders, do not re-sort.
      remap = np.cumsum(s) - 1
      sub_p, sub_user = remap[by_p[s[by_p]]], remap[by_user[s[by_user]]]
      report["slices"][name][task] = _task_metrics(y[s], p[s], user[s], sub_p, sub_user)
  return report


def ranking_auc(score, labels, mask, targets=("ctr", "lvtr"), tasks=TASKS) -> dict:
  """AUC of one fused score (Ranking_Score) against several tasks' labels: target ->
  {"auc", "n", "pos"} over the records where that task is labelled (``mask > 0``)."""
  score, labels, mask = np.asarray(score), np.asarray(labels), np.asarray(mask)
  out = {}
  for task in targets:
    t = tasks.index(task)
    keep = mask[:, t] > 0
    y = labels[keep, t]
    out[task] = {"auc": _none_if_nan(auc(y, score[keep])), "n": int(keep.sum()),
                 "pos": int(y.sum())}
  return out


def standard_slices(records: dict, live_sparse_threshold: int = 5) -> dict:
  """The standard evaluation slices of a batch or sample table of evaluation records.

  ``highlight`` / ``non_highlight`` (``in_highlight == 1`` / ``== 0``) when any record
  has an oracle (``in_highlight >= 0``); ``live_sparse`` / ``other``: the user's live
  history at exposure time holds fewer than / at least ``live_sparse_threshold`` items
  (from ``lv_offsets`` of a sample table, else ``lv_len`` of a padded batch; a padded length
  is truncated, so keep the threshold <= the padded width).
  """
  if "lv_offsets" in records:
    lv_len = np.diff(np.asarray(records["lv_offsets"]))
  elif "lv_len" in records:
    lv_len = np.asarray(records["lv_len"])
  else:
    raise ValueError("standard_slices needs 'lv_offsets' (sample table) or 'lv_len' "
                     f"(padded batch); got fields {sorted(records)}")
  out = {}
  if "in_highlight" in records:
    hl = np.asarray(records["in_highlight"])
    if (hl >= 0).any():
      out["highlight"] = hl == 1
      out["non_highlight"] = hl == 0
  out["live_sparse"] = lv_len < live_sparse_threshold
  out["other"] = ~out["live_sparse"]
  return out


class WindowedMetrics:
  """Accumulates evaluation records per time window for prequential (online) evaluation.

  ``add`` may be called several times for one window; ``per_window()`` evaluates each window
  on its own records, ``overall()`` evaluates all records added so far at once (exact, not an
  average of windows). A slice missing from some ``add`` call is False for those records.
  """

  def __init__(self, tasks=TASKS):
    self.tasks = tuple(tasks)
    self._parts = []  # (window_id, probs, labels, mask, user_id, slices)

  def add(self, window_id, probs, labels, mask, user_id, slices: dict | None = None) -> None:
    probs = np.asarray(probs, np.float32)
    n = len(probs)
    for name, arr in (("labels", labels), ("mask", mask), ("user_id", user_id)):
      if len(arr) != n:
        raise ValueError(f"WindowedMetrics.add: {name} has {len(arr)} records, probs {n}")
    slices = {k: np.asarray(v, bool) for k, v in (slices or {}).items()}
    self._parts.append((window_id, probs, np.asarray(labels, np.float32),
                        np.asarray(mask, np.float32), np.asarray(user_id), slices))

  def _evaluate(self, parts) -> dict:
    names = sorted({k for part in parts for k in part[5]})
    cat = [np.concatenate([part[i] for part in parts]) for i in range(1, 5)]
    slices = {k: np.concatenate([part[5].get(k, np.zeros(len(part[1]), bool))
                                 for part in parts]) for k in names}
    return evaluate(*cat, slices=slices, tasks=self.tasks)

  def window_ids(self) -> list:
    """Window ids in first-added order."""
    return list(dict.fromkeys(part[0] for part in self._parts))

  def per_window(self) -> list[dict]:
    """One ``{"window": id, **evaluate(...)}`` per window, in first-added order."""
    return [{"window": w, **self._evaluate([p for p in self._parts if p[0] == w])}
            for w in self.window_ids()]

  def overall(self) -> dict:
    """Metrics over every record added so far."""
    if not self._parts:
      raise ValueError("WindowedMetrics.overall: no records were added")
    return self._evaluate(self._parts)


# Oracle fields of evaluation records (simulated worlds): the true click probability, and the
# same with one term of the simulator's click logit (base + affinity + highlight) removed.
ORACLE_FIELDS = ("oracle_p_click", "oracle_p_no_highlight", "oracle_p_no_affinity")


def _logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
  return np.log(p) - np.log1p(-p)


def headroom(p_model, y, oracle: dict, min_records: int = 50) -> dict | None:
  """Where a click model stands against the oracle of a simulated world, on one set of records.

  Args:
    p_model: the model's p(click) per record.
    y: the click labels.
    oracle: ``ORACLE_FIELDS`` -> per-record arrays (NaN where unknown).
    min_records: fewer records with an oracle than this: None.

  Returns None when fewer than ``min_records`` records have an oracle, else:
    n, pos: records with an oracle, and their clicks;
    auc: the model's click AUC; oracle_auc: the true p_click's AUC (the ceiling: 1 -
      oracle_auc is label noise no model removes); oracle_no_highlight_auc /
      oracle_no_affinity_auc: the oracle with that term of its logit removed. oracle_auc minus
      one of them is what knowing that term is worth on these records;
    learned: the model's logit regressed on the oracle logit's three terms (``rest`` = base,
      ``affinity``, ``highlight``; least squares with an intercept): 1 = the model carries
      that term at its true scale, 0 = not at all; None for a term that does not vary here
      (the highlight term outside highlights);
    projected_auc: the AUC of that regression's fit, the model's logit without its
      residual: oracle_auc - projected_auc is the gap from carrying the terms at the wrong
      scale, projected_auc - auc the gap from the residual (logit variation unrelated to the
      true logit: estimation noise of ids and histories, overfitting);
    residual_sd / logit_sd: the residual's and the model logit's standard deviations.
  """
  p_model, y = np.asarray(p_model, np.float64), np.asarray(y)
  cols = {k: np.asarray(oracle[k], np.float64) for k in ORACLE_FIELDS}
  keep = np.isfinite(p_model) & np.all([np.isfinite(c) for c in cols.values()], axis=0)
  if keep.sum() < min_records:
    return None
  y, p_model = y[keep], p_model[keep]
  cols = {k: c[keep] for k, c in cols.items()}
  full = _logit(cols["oracle_p_click"])
  terms = {"affinity": full - _logit(cols["oracle_p_no_affinity"]),
           "highlight": full - _logit(cols["oracle_p_no_highlight"])}
  terms = {"rest": full - terms["affinity"] - terms["highlight"], **terms}
  varies = {k: bool(np.std(v) > 1e-6) for k, v in terms.items()}
  names = [k for k in terms if varies[k]]
  x = np.stack([np.ones(len(y))] + [terms[k] for k in names], axis=1)
  model_logit = _logit(p_model)
  fit = np.linalg.lstsq(x, model_logit, rcond=None)[0]
  coef, projected = fit[1:], x @ fit
  learned = {k: None for k in terms} | {k: float(c) for k, c in zip(names, coef)}
  return {"n": int(len(y)), "pos": int(y.sum()), "auc": _none_if_nan(auc(y, p_model)),
          "oracle_auc": _none_if_nan(auc(y, cols["oracle_p_click"])),
          "oracle_no_highlight_auc": _none_if_nan(auc(y, cols["oracle_p_no_highlight"])),
          "oracle_no_affinity_auc": _none_if_nan(auc(y, cols["oracle_p_no_affinity"])),
          "learned": learned, "projected_auc": _none_if_nan(auc(y, projected)),
          "residual_sd": float(np.std(model_logit - projected)),
          "logit_sd": float(np.std(model_logit))}


def headroom_by_slice(p_model, y, oracle: dict, slices: dict) -> dict:
  """``headroom`` over all records ("overall") and per slice; slices without enough oracle
  records are left out; {} when the records have no oracle at all."""
  out = {"overall": headroom(p_model, y, oracle)}
  if out["overall"] is None:
    return {}
  for name, sel in slices.items():
    sel = np.asarray(sel, bool)
    out[name] = headroom(np.asarray(p_model)[sel], np.asarray(y)[sel],
                         {k: np.asarray(v)[sel] for k, v in oracle.items()})
  return {k: v for k, v in out.items() if v is not None}
