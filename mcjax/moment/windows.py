"""Labels and sample emission of the Moment engine: pure functions of sorted events.

Nothing here reads files or features; the same logic can run on any engine that delivers the
events of one exposure in time order (numpy here; a stream engine later).

Labels, per live exposure, in TASKS order (ctr, lvtr, ltr, cmtr, gtr, wtr) = click, long view,
like, comment, gift, follow; only the events of live exposures come in (a short-video
watch_end ends a play, never a watch). Each label *fires* at the time of its first event in the
exposure:

* ctr at the first click, if it comes at or before exposure_ts + no_click_close_s; a later click
  is ignored (counted in ``late_clicks``: no_click_close_s must cover the click delay).
* The exposure *closes* at its first watch_end after the click, capped at click + max_watch_s
  (a clicked exposure without watch_end closes at that horizon); an exposure without click
  closes at exposure_ts + no_click_close_s.
* lvtr fires at click_ts + long_view_s when the watch lasts that long, i.e. when the exposure
  is still open then (no watch_end before it). This uses event times only, so it is known at
  the fire time itself (the watch_end value agrees: watch_end ts = click ts + value).
* ltr, cmtr, gtr, wtr fire at the first like, comment, gift, follow at or after the click.
  Interactions without a click (or before it) are ignored (``ignored_without_click``).
* Only events at or before the close count (others: ``ignored_after_close``).

Samples (``emit_samples``), with windows (E + (k-1) w, E + k w], k >= 1, E the exposure time:

* realtime: a REALTIME sample at the end E + k w of every window in which a label fired, before
  the window holding the close, plus one CLOSE sample at the close; the labels that fired in
  the close's window go into the CLOSE sample. first_only: a label is trained (y 1, mask 1)
  only in the sample of the window where it fired, masked before and after; in the CLOSE
  sample a label that never fired is trained as negative (y 0, mask 1). first_only=False: in
  every sample at or after its window a fired label is trained positive; masked before.
  An exposure without click yields exactly one CLOSE sample, all labels negative.
* on_close: one CLOSE sample at the close, final labels, all masks 1.
* fast_slow: a FAST sample at min(E + fast_window_s, close) with the labels fired so far, all
  masks 1; a SLOW sample at E + slow_window_s only if a label fired after the FAST time (and
  by then), carrying just those labels (y 1, mask 1; others mask 0). Labels firing after the
  SLOW time are lost (``labels_after_slow``).

``eval_rows``: one EVAL record per exposure at its exposure time with its final labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.eventlog import schema as S
from mcjax.moment.config import MomentConfig
from mcjax.moment.events import NEVER, first_rows, gather
from mcjax.contract import schema as SS

_INTERACTIONS = {"ltr": S.LIKE, "cmtr": S.COMMENT, "gtr": S.GIFT, "wtr": S.FOLLOW}
_TASK = {t: i for i, t in enumerate(SS.TASKS)}


@dataclasses.dataclass(frozen=True)
class Labels:
  """Label fire times of n exposures."""
  exposure_ts: np.ndarray  # (n,) int64
  fire: np.ndarray         # (n, len(TASKS)) int64 fire time, NEVER when it never fired
  close: np.ndarray        # (n,) int64 close time
  stats: dict


def _later(t: np.ndarray, ms: int) -> np.ndarray:
  """t + ms, with NEVER staying NEVER (no overflow)."""
  never = t == NEVER
  return np.where(never, NEVER, np.where(never, 0, t) + ms)


def label_times(group: np.ndarray, ts: np.ndarray, code: np.ndarray, exposure_ts: np.ndarray,
                cfg: MomentConfig) -> Labels:
  """Fire and close times of n exposures from their events.

  Args:
    group: (m,) exposure row 0..n-1 of each event (live exposures only).
    ts, code: (m,) event time and EVENT_CODE, sorted by time.
    exposure_ts: (n,) time of each exposure.
    cfg: the engine settings.
  """
  n = len(exposure_ts)
  ec = S.EVENT_CODE
  click = gather(ts, first_rows(group, code == ec[S.CLICK], n), NEVER)
  late = (click != NEVER) & (click > exposure_ts + cfg.no_click_close_ms)
  click = np.where(late, NEVER, click)
  clicked = click != NEVER
  horizon = _later(click, cfg.max_watch_ms)
  after_click = ts >= click[group]
  watch_ts = gather(ts, first_rows(group, (code == ec[S.WATCH_END]) & after_click, n), NEVER)
  close = np.where(clicked, np.minimum(watch_ts, horizon), exposure_ts + cfg.no_click_close_ms)
  long_view = _later(click, cfg.long_view_ms)
  long_view_ok = clicked & (long_view <= close)

  fire = np.full((n, len(SS.TASKS)), NEVER, np.int64)
  fire[:, _TASK["ctr"]] = click
  fire[:, _TASK["lvtr"]] = np.where(long_view_ok, long_view, NEVER)
  in_time = after_click & (ts <= close[group])
  for task, event in _INTERACTIONS.items():
    fire[:, _TASK[task]] = gather(ts, first_rows(group, (code == ec[event]) & in_time, n), NEVER)

  feedback = (code != ec[S.EXPOSURE]) & (code != ec[S.CLICK])
  stats = {
      "late_clicks": int(late.sum()),
      "ignored_without_click": int((feedback & ~after_click).sum()),
      "ignored_after_close": int(((code != ec[S.EXPOSURE]) & after_click
                                  & (ts > close[group])).sum()),
  }
  return Labels(exposure_ts=exposure_ts, fire=fire, close=close, stats=stats)


def _rows(x, sample_ts, kind, labels, mask) -> dict:
  return {"x": np.asarray(x, np.int64), "sample_ts_ms": np.asarray(sample_ts, np.int64),
          "kind": np.broadcast_to(np.asarray(kind, np.int32), np.shape(x)).copy(),
          "labels": np.asarray(labels, np.float32), "label_mask": np.asarray(mask, np.float32)}


def _concat(parts: list[dict]) -> dict:
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _ceil_div(a: np.ndarray, b: int) -> np.ndarray:
  return -((-a) // b)


def _realtime(lab: Labels, cfg: MomentConfig) -> dict:
  n = len(lab.close)
  w = cfg.window_ms
  fired = lab.fire != NEVER
  e = lab.exposure_ts[:, None]
  k_fire = np.where(fired, np.maximum(1, _ceil_div(np.where(fired, lab.fire, e) - e, w)), 0)
  k_close = np.maximum(1, _ceil_div(lab.close - lab.exposure_ts, w))
  early = fired & (k_fire < k_close[:, None])
  x, k = np.nonzero(early)[0], k_fire[early]
  if len(x):
    order = np.lexsort((k, x))
    x, k = x[order], k[order]
    first = np.ones(len(x), bool)
    first[1:] = (x[1:] != x[:-1]) | (k[1:] != k[:-1])
    x, k = x[first], k[first]
  xs = np.concatenate([x, np.arange(n)])
  ks = np.concatenate([k, k_close])
  is_close = np.arange(len(xs)) >= len(x)
  kf, f = k_fire[xs], fired[xs]
  positive = f & ((kf == ks[:, None]) if cfg.first_only else (kf <= ks[:, None]))
  mask = positive | (is_close[:, None] & ~f)
  sample_ts = np.where(is_close, lab.close[xs], lab.exposure_ts[xs] + ks * w)
  kind = np.where(is_close, SS.CLOSE, SS.REALTIME)
  return _rows(xs, sample_ts, kind, positive, mask)


def _fast_slow(lab: Labels, cfg: MomentConfig) -> tuple[dict, int]:
  n, t = lab.fire.shape
  fired = lab.fire != NEVER
  fast_ts = np.minimum(lab.exposure_ts + cfg.fast_window_ms, lab.close)
  slow_ts = lab.exposure_ts + cfg.slow_window_ms
  fast = _rows(np.arange(n), fast_ts, SS.FAST, fired & (lab.fire <= fast_ts[:, None]),
               np.ones((n, t)))
  late = fired & (lab.fire > fast_ts[:, None])
  in_slow = late & (lab.fire <= slow_ts[:, None])
  x = np.flatnonzero(in_slow.any(axis=1))
  slow = _rows(x, slow_ts[x], SS.SLOW, in_slow[x], in_slow[x])
  return _concat([fast, slow]), int((late & ~in_slow).sum())


def emit_samples(lab: Labels, cfg: MomentConfig) -> tuple[dict, dict]:
  """Training rows of ``cfg.mode`` and their stats.

  Returns rows {x (exposure row), sample_ts_ms, kind, labels, label_mask}, unsorted, and
  stats (``labels_after_slow`` in fast_slow mode).
  """
  n, t = lab.fire.shape
  if cfg.mode == "realtime":
    return _realtime(lab, cfg), {}
  if cfg.mode == "on_close":
    return _rows(np.arange(n), lab.close, SS.CLOSE, lab.fire != NEVER, np.ones((n, t))), {}
  if cfg.mode == "fast_slow":
    rows, lost = _fast_slow(lab, cfg)
    return rows, {"labels_after_slow": lost}
  raise ValueError(f"MomentConfig.mode={cfg.mode!r}: expected one of realtime, on_close, "
                   "fast_slow")


def eval_rows(lab: Labels) -> dict:
  """One EVAL row per exposure at its exposure time, final labels, all masks 1."""
  n, t = lab.fire.shape
  return _rows(np.arange(n), lab.exposure_ts, SS.EVAL, lab.fire != NEVER, np.ones((n, t)))
