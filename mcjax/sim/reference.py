"""The observable reference: how much of the oracle a causal model can reach on a given log.

The oracle (``_oracle/``) knows each user's hidden interests and familiarities; a model only
sees the log before the query time. Two numbers put a model's AUC between the two:

* ``lr_auc``: a logistic regression on causal, oracle-shaped features of each live exposure
  (everything strictly before its time): the hour and the user's activity bucket, the author
  (one-hot: popularity), the live's crowd in the last 30 s and 5 min with its click rate, and
  the user's whole short-video history against the candidate (plays and likes of the author
  and of its category, their log shares) and the category's share of the user's live clicks.
  It is fitted on the exposures before the training boundary and scored on the given records:
  what a small model with the right features reaches, not a bound.
* ``oracle_affinity_estimated_auc``: the oracle's logit with its affinity term (interest in
  the author's category + familiarity) replaced by its least-squares estimate from the same
  history features (fitted on the training exposures; ``affinity_r2`` is its R^2 on the
  scored records), the other terms exact. The affinity term is the oracle's largest; what a
  one-day log cannot tell of it is out of any model's reach, so this is near the best a model
  of these histories can do.
* ``oracle_estimated_auc``: the oracle's logit with both of its hidden terms estimated, the
  affinity as above and the highlight term by least squares on the live's crowd before the
  exposure, the crowd counts ``full`` reads (``crowd_features``; ``highlight_r2``), only the
  base term (activity, popularity, hour) exact: what a model reaches that reads both effects
  as well as these linear estimates do. Not a bound either (a better estimator of either term is possible), but a
  model near it has little left in these features.

``reference`` works on any simulated log folder; ``experiments/levers.py`` reports it beside
each run's test AUC.
"""

from __future__ import annotations

import numpy as np

from mcjax.eventlog import io as eio
from mcjax.eventlog import schema as S
from mcjax.sim import metrics as M
from mcjax.sim import observability as O
from mcjax.sim import summary as SM

# What ``reference`` computes; a cache of its result (experiments.levers) holding another
# version is computed again.
VERSION = 2
_SHARE_PRIOR = 0.5  # pseudo-count per category in the log shares
LIVE_COUNTS = slice(12, 17)  # the columns of history_features the click model leaves out


def _topic_of(authors) -> tuple:
  ids = authors["author_id"].to_numpy()
  order = np.argsort(ids)
  return ids[order], authors["category"].to_numpy()[order]


def history_features(e: dict, authors, ex: dict) -> np.ndarray:
  """[N, 17] causal history features of the live exposures ``ex`` (user, author, ts arrays).

  Short video: log1p plays of everything / the author's category / the author, log1p likes of
  the category / the author, the category's log share of the plays and its square, the
  author's log share; live: the category's log share of the user's clicks over its share of
  the user's exposures; three interactions (the category's share and the author's plays times
  log1p plays, any play of the author); last (``LIVE_COUNTS``), log1p earlier live exposures
  and clicks of the author, exposures and clicks of its category, exposures of everything.
  The click model leaves the live counts out: they grow with the hour of day, and a fit on
  the morning extrapolates them badly to the evening (measured: -0.002 AUC on the `default`
  world's test hours); the affinity estimate uses them.
  """
  ids, topics = _topic_of(authors)
  n_cat = int(topics.max(initial=0)) + 1
  n_auth = int(max(ids.max(initial=0), ex["author"].max(initial=0))) + 1

  def top(a):
    return topics[np.minimum(np.searchsorted(ids, a), len(ids) - 1)]

  user, author, ts = ex["user"], ex["author"], ex["ts"]
  q_cat, q_auth = user * n_cat + top(author), user * n_auth + author

  def before(u, a, t, by_author: bool):
    return (M.count_before(u * n_auth + a, t, q_auth, ts) if by_author
            else M.count_before(u * n_cat + top(a), t, q_cat, ts))

  pu, pa, pt = SM.pick(e, SM.mask(e, S.SHORT_VIDEO, S.WATCH_END), "user_id", "author_id",
                       "ts_ms")
  lu, la, lt = SM.pick(e, SM.mask(e, S.SHORT_VIDEO, S.LIKE), "user_id", "author_id", "ts_ms")
  cu, ca, ct = SM.pick(e, SM.mask(e, S.LIVE, S.CLICK), "user_id", "author_id", "ts_ms")
  xu, xa, xt = SM.pick(e, SM.mask(e, S.LIVE, S.EXPOSURE), "user_id", "author_id", "ts_ms")
  plays = M.count_before(pu, pt, user, ts)
  plays_cat, plays_auth = before(pu, pa, pt, False), before(pu, pa, pt, True)
  seen_all, seen_cat = M.count_before(xu, xt, user, ts), before(xu, xa, xt, False)
  clicks_all, clicks_cat = M.count_before(cu, ct, user, ts), before(cu, ca, ct, False)
  share = np.log((plays_cat + _SHARE_PRIOR) / (plays + _SHARE_PRIOR * n_cat))
  live_share = (np.log((clicks_cat + _SHARE_PRIOR) / (clicks_all + _SHARE_PRIOR * n_cat))
                - np.log((seen_cat + _SHARE_PRIOR) / (seen_all + _SHARE_PRIOR * n_cat)))
  L = np.log1p
  return np.stack([
      L(plays), L(plays_cat), L(plays_auth), L(before(lu, la, lt, False)),
      L(before(lu, la, lt, True)), share, share ** 2,
      np.log((plays_auth + 0.1) / (plays + 1.0)), live_share,
      share * L(plays), L(plays_auth) * L(plays), (plays_auth > 0).astype(np.float64),
      L(before(xu, xa, xt, True)), L(before(cu, ca, ct, True)), L(seen_cat),
      L(clicks_cat), L(seen_all)], axis=1)


def crowd_features(e: dict, item: np.ndarray, ts: np.ndarray, crowd: dict) -> np.ndarray:
  """The highlight estimate's features, the crowd counts ``full`` reads (not the gift values):
  ``observability.highlight_features`` of the events counted by ``crowd`` (exposure, click,
  like, comment) and gifts (log1p counts in the last 30 s and 5 min, click rates); per event,
  the 30 s log1p count minus the 5 min one and its square (a burst against the live's recent
  level); log1p of the viewers in the room (``summary.viewers_before``)."""
  counted = {**crowd, "gift": SM.pick(e, SM.mask(e, S.LIVE, S.GIFT), "item_id", "ts_ms")}
  x = O.highlight_features(item, ts, counted)
  per_window = len(counted) + 1  # the counts, then the click rate
  burst = x[:, :len(counted)] - x[:, per_window:per_window + len(counted)]
  viewers = np.maximum(SM.viewers_before(e, item, ts), 0)
  return np.hstack([x, burst, burst ** 2, np.log1p(viewers)[:, None]])


def _least_squares(x: np.ndarray, target: np.ndarray, train: np.ndarray,
                   test: np.ndarray) -> tuple[np.ndarray, float]:
  """(the fit of ``target`` on [1, x] from the ``train`` rows, at every row; its R^2 on the
  ``test`` rows)."""
  h = np.hstack([np.ones((len(x), 1)), x])
  fit = h @ np.linalg.lstsq(h[train], target[train], rcond=None)[0]
  resid = target[test] - fit[test]
  return fit, float(1.0 - resid.var() / max(target[test].var(), 1e-12))


def load_events(log_dir: str) -> dict:
  """The log's events as column arrays, for ``reference`` and ``live_exposure_times``."""
  return SM.event_columns(log_dir)


def live_exposure_times(events: dict) -> dict:
  """{"exposure_id", "ts_ms"} of the live exposures of ``load_events``'s arrays."""
  ids, ts = SM.pick(events, SM.mask(events, S.LIVE, S.EXPOSURE), "exposure_id", "ts_ms")
  return {"exposure_id": ids, "ts_ms": ts}


def reference(log_dir: str, train_before_ms: int, score_ids: np.ndarray | None = None,
              after_ms: int | None = None, events: dict | None = None) -> dict:
  """The observable reference (module doc) of a simulated log.

  Fits on the live exposures before ``train_before_ms``; scores the exposures whose id is in
  ``score_ids`` (else those at or after ``after_ms``). ``events``: ``load_events(log_dir)``
  when the caller already has them. Returns n, oracle_auc, lr_auc, lr_logloss, affinity_r2,
  oracle_affinity_estimated_auc, highlight_r2, oracle_estimated_auc, oracle_no_affinity_auc.
  """
  e = events if events is not None else load_events(log_dir)
  oracle = eio.read_oracle(log_dir, "exposures.parquet")
  if oracle is None:
    raise ValueError(f"{log_dir} has no oracle; the observable reference needs a simulated "
                     "world")
  authors = eio.read_side(log_dir, "authors.parquet")
  users = eio.read_side(log_dir, "users.parquet")
  is_ex = SM.mask(e, S.LIVE, S.EXPOSURE)
  ex_id, ts, user, item, author = SM.pick(e, is_ex, "exposure_id", "ts_ms", "user_id",
                                           "item_id", "author_id")
  y = np.isin(ex_id, e["exposure_id"][SM.mask(e, S.LIVE, S.CLICK)]).astype(np.float64)
  o_id = oracle["exposure_id"].to_numpy()
  pos = np.minimum(np.searchsorted(o_id, ex_id), len(o_id) - 1)
  if len(o_id) == 0 or not np.array_equal(o_id[pos], ex_id):
    raise ValueError(f"{log_dir}: oracle exposures do not match the live exposures")
  logit = {k: M.logit(oracle[k].to_numpy().astype(np.float64)[pos])
           for k in ("p_click", "p_click_no_affinity", "p_click_no_highlight")}
  train = ts < train_before_ms
  test = (np.isin(ex_id, score_ids) if score_ids is not None
          else ts >= (after_ms if after_ms is not None else train_before_ms))
  if train.sum() < 100 or test.sum() < 50:
    raise ValueError(f"{log_dir}: too few live exposures to fit ({int(train.sum())}) or "
                     f"score ({int(test.sum())}) the observable reference")

  hist = history_features(e, authors, {"user": user, "author": author, "ts": ts})
  crowd = {"exposure": (item, ts)}
  for name, ev in (("click", S.CLICK), ("like", S.LIKE), ("comment", S.COMMENT)):
    crowd[name] = SM.pick(e, SM.mask(e, S.LIVE, ev), "item_id", "ts_ms")
  hour = 2 * np.pi * (ts / 3_600_000.0 % 24.0) / 24.0
  u_ids = users["user_id"].to_numpy()
  bucket = users["activity_bucket"].to_numpy()[
      np.minimum(np.searchsorted(u_ids, user), len(u_ids) - 1)]
  authors_seen = np.unique(author[train])
  x = np.hstack([np.stack([np.cos(hour), np.sin(hour)], 1),
                 (bucket[:, None] == np.unique(bucket)[None, :]).astype(np.float64),
                 (author[:, None] == authors_seen[None, :]).astype(np.float64),
                 O.highlight_features(item, ts, crowd), hist[:, :LIVE_COUNTS.start]])
  zero = np.zeros(len(y))
  lr = M.fit_logistic(x[train], y[train], zero[train], l2=1e-4)
  z = lr(x[test], zero[test])
  p = np.clip(1.0 / (1.0 + np.exp(-z)), 1e-7, 1 - 1e-7)
  logloss = float(-np.mean(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)))

  affinity = logit["p_click"] - logit["p_click_no_affinity"]
  highlight = logit["p_click"] - logit["p_click_no_highlight"]
  aff_fit, aff_r2 = _least_squares(hist, affinity, train, test)
  hl_fit, hl_r2 = _least_squares(crowd_features(e, item, ts, crowd), highlight, train, test)
  rest = logit["p_click"] - affinity - highlight
  return {
      "version": VERSION,
      "n": int(test.sum()),
      "oracle_auc": M.auc(y[test], logit["p_click"][test]),
      "oracle_no_affinity_auc": M.auc(y[test], logit["p_click_no_affinity"][test]),
      "lr_auc": M.auc(y[test], z),
      "lr_logloss": logloss,
      "affinity_r2": aff_r2,
      "oracle_affinity_estimated_auc": M.auc(
          y[test], logit["p_click_no_affinity"][test] + aff_fit[test]),
      "highlight_r2": hl_r2,
      "oracle_estimated_auc": M.auc(y[test], (rest + aff_fit + hl_fit)[test]),
  }
