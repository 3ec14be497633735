"""Time plans of a run: which evaluation records are scored, and which samples trained on, when.

A plan is a list of windows over event time; in window k the model first scores the window's
evaluation records (one per live exposure, by exposure time), then trains on the training
samples *emitted* in it (by ``sample_ts_ms``), so a mode whose labels arrive late really learns
late. Three protocols (``config.train.mode``), all on the sorted time arrays of the two splits:

* ``online`` (prequential): windows of ``window_min`` minutes, one pass over each.
* ``offline``: window 0 trains (``epochs`` passes) on every sample emitted before the test
  boundary; window 1 scores the records at or after it.
* ``offline_tvt``: window 0 trains on the samples emitted before the validation boundary;
  after every epoch the validation records [validation boundary, test boundary) are scored
  (``Plan.valid``) and the best checkpoint kept; window 1 scores the test records (at or after
  the test boundary) with that checkpoint.

A boundary is an absolute time (``offline_split_ts_ms`` for the test boundary,
``valid_split_ts_ms`` for the validation one) or, where that is 0, a share of the samples'
time span (``offline_split``, ``valid_split``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.train import RunError


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


@dataclasses.dataclass(frozen=True)
class Plan:
  """The windows of a run in order; each trains ``epochs`` passes over its samples.

  ``valid`` (offline_tvt only) holds the validation records in ``eval_lo:eval_hi``; it is
  not a window of the loop (index -1) but is scored at the end of every epoch.
  """
  mode: str
  windows: tuple[Window, ...]
  epochs: int = 1
  valid: Window | None = None

  def epoch_steps(self, w: Window, batch_size: int) -> int:
    """Train steps of one pass over window ``w``'s samples."""
    return -(-w.n_train // batch_size)

  def steps(self, w: Window, batch_size: int) -> int:
    return self.epoch_steps(w, batch_size) * self.epochs

  def first_step(self, w: Window, batch_size: int) -> int:
    """The step count when training on ``w`` starts (every earlier window fully trained)."""
    return sum(self.steps(v, batch_size) for v in self.windows[:w.index])

  def total_steps(self, batch_size: int) -> int:
    return sum(self.steps(w, batch_size) for w in self.windows)

  def epoch_end(self, w: Window, step: int, batch_size: int) -> int | None:
    """The epoch (1-based) that ``step`` completes in window ``w``, else None."""
    done = step - self.first_step(w, batch_size)
    per = self.epoch_steps(w, batch_size)
    return done // per if per and done > 0 and done % per == 0 else None


def _check_sorted(ts: np.ndarray, name: str) -> None:
  if len(ts) > 1 and np.any(np.diff(ts) < 0):
    raise ValueError(f"{name} split is not sorted by sample_ts_ms; rebuild its samples")


def time_span(eval_ts: np.ndarray, train_ts: np.ndarray) -> tuple[int, int]:
  """[first, last + 1) ms over both splits."""
  _check_sorted(eval_ts, "eval")
  _check_sorted(train_ts, "train")
  both = [x for x in (eval_ts, train_ts) if len(x)]
  if not both:
    raise RunError("no samples: both the train and the eval split are empty")
  return min(int(x[0]) for x in both), max(int(x[-1]) for x in both) + 1


def online_windows(eval_ts: np.ndarray, train_ts: np.ndarray, window_ms: int) -> list[Window]:
  """Windows aligned to multiples of ``window_ms`` covering both splits' times."""
  if window_ms <= 0:
    raise ValueError(f"window length must be > 0 ms, got {window_ms}")
  lo, hi = time_span(eval_ts, train_ts)
  first = (lo // window_ms) * window_ms
  edges = np.arange(first, hi + window_ms, window_ms, dtype=np.int64)
  e_idx = np.searchsorted(eval_ts, edges, side="left")
  t_idx = np.searchsorted(train_ts, edges, side="left")
  out = []
  for k in range(len(edges) - 1):
    if e_idx[k] == e_idx[k + 1] and t_idx[k] == t_idx[k + 1]:
      continue
    out.append(Window(len(out), int(edges[k]), int(edges[k + 1]), int(e_idx[k]),
                      int(e_idx[k + 1]), int(t_idx[k]), int(t_idx[k + 1])))
  return out


def offline_split(eval_ts: np.ndarray, train_ts: np.ndarray, test_ms: int) -> list[Window]:
  """Two windows: [train on the samples emitted before ``test_ms``] then [score the records
  at or after it]."""
  lo, hi = time_span(eval_ts, train_ts)
  t_hi = int(np.searchsorted(train_ts, test_ms, side="left"))
  e_lo = int(np.searchsorted(eval_ts, test_ms, side="left"))
  return [Window(0, lo, test_ms, 0, 0, 0, t_hi),
          Window(1, test_ms, hi, e_lo, len(eval_ts), t_hi, t_hi)]


def offline_tvt(eval_ts: np.ndarray, train_ts: np.ndarray, valid_ms: int,
                test_ms: int) -> tuple[list[Window], Window]:
  """(windows, valid): train before ``valid_ms``, validate on [valid_ms, test_ms), test the
  records at or after ``test_ms``."""
  lo, hi = time_span(eval_ts, train_ts)
  t_hi = int(np.searchsorted(train_ts, valid_ms, side="left"))
  v_lo, e_lo = (int(np.searchsorted(eval_ts, t, side="left")) for t in (valid_ms, test_ms))
  return ([Window(0, lo, valid_ms, 0, 0, 0, t_hi),
           Window(1, test_ms, hi, e_lo, len(eval_ts), t_hi, t_hi)],
          Window(-1, valid_ms, test_ms, v_lo, e_lo, t_hi, t_hi))


def boundary(train_cfg, key: str, lo: int, hi: int) -> int:
  """The time of boundary ``key`` (``offline_split`` or ``valid_split``): the absolute
  ``<key>_ts_ms`` when set, else ``lo`` plus that share of the span [lo, hi)."""
  at = int(train_cfg[f"{key}_ts_ms"])
  if not at:
    return lo + int(float(train_cfg[key]) * (hi - lo))
  if not lo < at < hi:
    raise RunError(f"config.train.{key}_ts_ms={at} is outside the samples' time span "
                   f"({lo}, {hi})")
  return at


def make_plan(train_cfg, eval_ts: np.ndarray, train_ts: np.ndarray) -> Plan:
  """The plan of ``config.train`` on the two splits' sorted times."""
  mode, epochs = train_cfg.mode, int(train_cfg.epochs)
  if mode == "online":
    return Plan(mode, tuple(online_windows(eval_ts, train_ts,
                                           int(train_cfg.window_min * 60_000))))
  lo, hi = time_span(eval_ts, train_ts)
  test_ms = boundary(train_cfg, "offline_split", lo, hi)
  if mode == "offline":
    return Plan(mode, tuple(offline_split(eval_ts, train_ts, test_ms)), epochs)
  valid_ms = boundary(train_cfg, "valid_split", lo, hi)
  if valid_ms >= test_ms:
    raise RunError(f"config.train.valid_split(_ts_ms) puts the validation boundary at "
                   f"{valid_ms}, not before the test boundary {test_ms} of "
                   f"config.train.offline_split(_ts_ms)")
  windows, valid = offline_tvt(eval_ts, train_ts, valid_ms, test_ms)
  if not valid.n_eval:
    raise RunError(f"config.train.valid_split(_ts_ms): no evaluation records to validate on "
                   f"in [{valid_ms}, {test_ms}) ms")
  return Plan(mode, tuple(windows), epochs, valid)
