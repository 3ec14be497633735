"""Small numpy tools for judging a world: rank AUC, offset logistic regression, causal counts.

``auc`` is ``mcjax.metrics.auc`` (the rank AUC with ties averaged, as the trainer reports
it; one implementation); ``fit_logistic`` is Newton/IRLS on
standardised features with a fixed per-row offset (the model learns only what the offset
misses); ``count_before`` counts, for each query (group, time), the events of the same group
in a time window strictly before the query time.
"""

from __future__ import annotations

import numpy as np

from mcjax.metrics import auc  # noqa: F401  (re-exported for the world checks)


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
  return np.log(p) - np.log1p(-p)


def fit_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray, *, l2: float = 1e-3,
                 steps: int = 30):
  """Fits p = sigmoid(offset + b + x @ w) by damped Newton; returns a scoring function.

  Features are standardised with the training mean and deviation; ``l2`` is a ridge on ``w``
  (per example).  The returned function maps (x, offset) to the logit.
  """
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0) + 1e-9
  z = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
  y = np.asarray(y, np.float64)
  w = np.zeros(z.shape[1])
  ridge = l2 * len(x) * np.eye(z.shape[1])
  ridge[0, 0] = 0.0

  def loss(w):
    m = offset + z @ w
    return np.sum(np.logaddexp(0.0, m) - y * m) + 0.5 * w @ ridge @ w

  current = loss(w)
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-np.clip(offset + z @ w, -30, 30)))
    grad = z.T @ (p - y) + ridge @ w
    hess = (z * (p * (1 - p))[:, None]).T @ z + ridge + 1e-9 * np.eye(len(w))
    step = np.linalg.solve(hess, grad)
    # Damped Newton: halve the step until the loss does not increase.
    for _ in range(30):
      new = loss(w - step)
      if new <= current:
        break
      step = step / 2
    else:
      break
    w, current = w - step, new
    if np.abs(step).max() < 1e-8:
      break

  def score(x_new: np.ndarray, offset_new: np.ndarray) -> np.ndarray:
    z_new = (np.asarray(x_new, np.float64) - mean) / std
    return offset_new + w[0] + z_new @ w[1:]

  return score


def count_before(group_ev: np.ndarray, ts_ev: np.ndarray, group_q: np.ndarray,
                 ts_q: np.ndarray, window_ms: int | None = None) -> np.ndarray:
  """For each query i: #events with group == group_q[i] and ts in [ts_q[i] - window, ts_q[i]).

  ``window_ms=None`` counts every earlier event of the group.  Groups are any int64 codes.
  """
  groups, inv = np.unique(np.concatenate([group_ev, group_q]), return_inverse=True)
  g_ev, g_q = inv[:len(group_ev)].astype(np.int64), inv[len(group_ev):].astype(np.int64)
  t0 = min(ts_ev.min(initial=0), ts_q.min(initial=0))
  span = int(max(ts_ev.max(initial=0), ts_q.max(initial=0)) - t0) + 1
  bits = max(span.bit_length(), 1)
  if bits + max(len(groups), 1).bit_length() > 62:
    raise ValueError("count_before: too many groups for the time span")
  keys = np.sort((g_ev << bits) | (ts_ev - t0))
  q = (g_q << bits) | (ts_q - t0)
  hi = np.searchsorted(keys, q, side="left")
  if window_ms is None:
    lo = np.searchsorted(keys, g_q << bits, side="left")
  else:
    lo = np.searchsorted(keys, (g_q << bits) | np.maximum(ts_q - t0 - window_ms, 0), side="left")
  return hi - lo
