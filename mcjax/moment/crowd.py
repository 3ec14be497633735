"""Real-time crowd features of a live room at a query time q, from all users' events.

For each window of CROWD_WINDOWS, 30s = (q - 30 s, q), 5m = (q - 5 min, q) and all =
[live start, q), the counts of exposures, clicks, likes, comments and gifts on the live and
the sum of gift values; then click_rate_w = clicks_w / max(exposures_w, 1); live_age_s =
(q - live start) / 1000; viewers_now = clicks before q whose watch_end is not before q (each
exposure's first click and its first watch_end). Only events strictly before q count, so the
features are causal. Vectorised: per-live sorted times (``SegmentedTimes``), searchsorted and
prefix sums; no loop over queries or lives.
"""

from __future__ import annotations

import numpy as np

from mcjax.eventlog import schema as S
from mcjax.moment.timeindex import SegmentedTimes, by_segment
from mcjax.samples import schema as SS

WINDOW_MS = {"30s": 30_000, "5m": 300_000}  # "all" starts at the live's start
_COUNTED = {"exposures": S.EXPOSURE, "clicks": S.CLICK, "likes": S.LIKE,
            "comments": S.COMMENT, "gifts": S.GIFT}


class CrowdIndex:
  """Answers ``CROWD_FEATURES`` for any number of (live, q) queries at once."""

  def __init__(self, live: np.ndarray, ts: np.ndarray, code: np.ndarray, value: np.ndarray,
               enter_live: np.ndarray, enter_ts: np.ndarray,
               leave_live: np.ndarray, leave_ts: np.ndarray):
    """Builds the index.

    Args:
      live, ts, code, value: live-domain events (live id, time, EVENT_CODE, value).
      enter_live, enter_ts: the live and first click time of every clicked live exposure.
      leave_live, leave_ts: the live and first watch_end time of those that ended.
    """
    self.series = {}
    for name, event in _COUNTED.items():
      m = code == S.EVENT_CODE[event]
      self.series[name] = SegmentedTimes(live[m], ts[m])
    gift = code == S.EVENT_CODE[S.GIFT]
    gifts = self.series["gifts"]
    self.gift_cumsum = np.concatenate([[0.0], np.cumsum(value[gift][gifts.order])])
    self.viewer_in = SegmentedTimes(enter_live, enter_ts)
    self.viewer_out = SegmentedTimes(leave_live, leave_ts)

  def features(self, live: np.ndarray, q: np.ndarray, live_start: np.ndarray) -> np.ndarray:
    """(n, len(CROWD_FEATURES)) float32 features of ``live`` at ``q`` (all int64 arrays)."""
    live, q, live_start = (np.asarray(a, np.int64) for a in (live, q, live_start))
    order = by_segment(live, q)  # sorted queries: every searchsorted below sweeps forward
    result = np.empty((len(q), len(SS.CROWD_FEATURES)), np.float32)
    result[order] = self._features(live[order], q[order], live_start[order])
    return result

  def _features(self, live: np.ndarray, q: np.ndarray, live_start: np.ndarray) -> np.ndarray:
    out = np.zeros((len(q), len(SS.CROWD_FEATURES)), np.float32)
    col = SS.CROWD_INDEX
    end = {name: s.position(live, q, "left") for name, s in self.series.items()}
    for window in SS.CROWD_WINDOWS:
      if window == "all":
        lo, side = live_start, "left"    # [start, q)
      else:
        lo, side = q - WINDOW_MS[window], "right"  # (q - w, q)
      for name, s in self.series.items():
        begin = s.position(live, lo, side)
        out[:, col[f"{name}_{window}"]] = np.maximum(end[name] - begin, 0)
        if name == "gifts":
          value = self.gift_cumsum[end[name]] - self.gift_cumsum[np.minimum(begin, end[name])]
          out[:, col[f"gift_value_{window}"]] = value
      out[:, col[f"click_rate_{window}"]] = (
          out[:, col[f"clicks_{window}"]] / np.maximum(out[:, col[f"exposures_{window}"]], 1.0))
    out[:, col["live_age_s"]] = (q - live_start) / 1000.0
    entered = self.viewer_in.position(live, q) - self.viewer_in.segment_start(live)
    left = self.viewer_out.position(live, q) - self.viewer_out.segment_start(live)
    out[:, col["viewers_now"]] = entered - left
    return out
