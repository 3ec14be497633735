"""The observability check: can a causal model recover the hidden effects from the log?

Two offset logistic regressions, fitted on the live exposures with an even exposure_id and
scored on the odd ones:

* highlight recovery: offset logit(p_click_no_highlight); features: the live's crowd counts
  strictly before the exposure (exposures, clicks, likes, comments in the last 30 s and the
  last 5 min, log1p) and its click rate in both windows;
* affinity recovery: offset logit(p_click_no_affinity); features: the user's short-video
  plays and likes, strictly before the exposure, of the candidate author and of the author's
  topic, and the user's total plays (log1p).

Share = (AUC(model) - AUC(offset alone)) / (AUC(p_click) - AUC(offset alone)): the part of
the oracle's AUC gain over the offset that the observable features recover.
"""

from __future__ import annotations

import numpy as np

from mcjax.sim import metrics as M

WINDOWS_MS = (30_000, 300_000)


def highlight_features(live_item: np.ndarray, live_ts: np.ndarray, crowd: dict) -> np.ndarray:
  """Crowd features of each live exposure (live_item[i] at live_ts[i]).

  ``crowd`` maps a name (exposure, click, like, comment) to (item_ids, ts) of those events.
  """
  cols = []
  for w in WINDOWS_MS:
    counts = {name: M.count_before(item, ts, live_item, live_ts, w)
              for name, (item, ts) in crowd.items()}
    cols += [np.log1p(c) for c in counts.values()]
    cols.append(counts["click"] / np.maximum(counts["exposure"], 1))
  return np.stack(cols, axis=1)


def affinity_features(user: np.ndarray, author: np.ndarray, ts: np.ndarray,
                      author_topic: dict, plays: tuple, likes: tuple) -> np.ndarray:
  """Short-video history features of each (user, candidate author) live exposure at ts.

  ``plays`` and ``likes`` are (user, author, ts) arrays of short-video watch_end (end of a
  play) / like events; ``author_topic`` is (author_ids sorted, topic of each).
  """
  ids, topics = author_topic
  def topic_of(a):
    return topics[np.searchsorted(ids, a)]
  n_auth = int(max(ids.max(initial=0), author.max(initial=0))) + 1
  n_top = int(topics.max(initial=0)) + 1
  cols = []
  for u, a, t in (plays, likes):
    cols.append(np.log1p(M.count_before(u * n_auth + a, t, user * n_auth + author, ts)))
    cols.append(np.log1p(M.count_before(u * n_top + topic_of(a), t,
                                        user * n_top + topic_of(author), ts)))
  u, _, t = plays
  cols.append(np.log1p(M.count_before(u, t, user, ts)))
  return np.stack(cols, axis=1)


def recovery_share(x: np.ndarray, clicked: np.ndarray, p_without: np.ndarray,
                   p_click: np.ndarray, train: np.ndarray) -> dict:
  """Fits on ``train`` rows, scores the rest; returns AUCs and the recovered share."""
  test = ~train
  offset = M.logit(p_without)
  model = M.fit_logistic(x[train], clicked[train], offset[train])
  auc_model = M.auc(clicked[test], model(x[test], offset[test]))
  auc_without = M.auc(clicked[test], p_without[test])
  auc_oracle = M.auc(clicked[test], p_click[test])
  gain = auc_oracle - auc_without
  share = (auc_model - auc_without) / gain if gain > 0 else float("nan")
  return {"auc_model": auc_model, "auc_offset": auc_without, "auc_oracle": auc_oracle,
          "share": float(share)}
