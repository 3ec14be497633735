"""Time plans of a run: online (prequential) evaluation windows, or an offline time split.

Online: event time is cut into windows of ``window_min`` minutes. In window k the model first
scores the window's evaluation records (one per live exposure, by exposure time), then trains
on the training samples *emitted* in the window (by ``sample_ts_ms``), so a mode whose labels
arrive late really learns late. Offline: train on every sample emitted before the split time,
evaluate the records after it. Both work on the sorted time arrays of the two splits.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Window:
  index: int
  start_ms: int
  end_ms: int
  eval_lo: int   # evaluation records [eval_lo, eval_hi)
  eval_hi: int
  train_lo: int  # training samples [train_lo, train_hi)
  train_hi: int

  @property
  def n_eval(self) -> int:
    return self.eval_hi - self.eval_lo

  @property
  def n_train(self) -> int:
    return self.train_hi - self.train_lo


def _check_sorted(ts: np.ndarray, name: str) -> None:
  if len(ts) > 1 and np.any(np.diff(ts) < 0):
    raise ValueError(f"{name} split is not sorted by sample_ts_ms; rebuild its samples")


def online_windows(eval_ts: np.ndarray, train_ts: np.ndarray, window_ms: int) -> list[Window]:
  """Windows aligned to multiples of ``window_ms`` covering both splits' times."""
  if window_ms <= 0:
    raise ValueError(f"window length must be > 0 ms, got {window_ms}")
  _check_sorted(eval_ts, "eval")
  _check_sorted(train_ts, "train")
  if len(eval_ts) == 0 and len(train_ts) == 0:
    raise ValueError("no samples: both the train and the eval split are empty")
  lo = min(x[0] for x in (eval_ts, train_ts) if len(x))
  hi = max(x[-1] for x in (eval_ts, train_ts) if len(x))
  first = (int(lo) // window_ms) * window_ms
  edges = np.arange(first, int(hi) + window_ms + 1, window_ms, dtype=np.int64)
  e_idx = np.searchsorted(eval_ts, edges, side="left")
  t_idx = np.searchsorted(train_ts, edges, side="left")
  out = []
  for k in range(len(edges) - 1):
    if e_idx[k] == e_idx[k + 1] and t_idx[k] == t_idx[k + 1]:
      continue
    out.append(Window(len(out), int(edges[k]), int(edges[k + 1]), int(e_idx[k]),
                      int(e_idx[k + 1]), int(t_idx[k]), int(t_idx[k + 1])))
  return out


def offline_split(eval_ts: np.ndarray, train_ts: np.ndarray, share: float) -> list[Window]:
  """Two windows: [train on the first ``share`` of time] then [evaluate on the rest].

  Window 0 trains on samples emitted before the split and evaluates nothing; window 1
  evaluates the records at or after the split and trains on nothing.
  """
  _check_sorted(eval_ts, "eval")
  _check_sorted(train_ts, "train")
  both = [x for x in (eval_ts, train_ts) if len(x)]
  if not both:
    raise ValueError("no samples: both the train and the eval split are empty")
  lo = min(int(x[0]) for x in both)
  hi = max(int(x[-1]) for x in both) + 1
  split = lo + int(share * (hi - lo))
  t_hi = int(np.searchsorted(train_ts, split, side="left"))
  e_lo = int(np.searchsorted(eval_ts, split, side="left"))
  return [Window(0, lo, split, 0, 0, 0, t_hi),
          Window(1, split, hi, e_lo, len(eval_ts), t_hi, t_hi)]
