"""Real-time crowd features of a live room at a query time q, from all users' events.

For each window of CROWD_WINDOWS, 30s = (q - 30 s, q), 5m = (q - 5 min, q) and all =
[live start, q), the counts of exposures, clicks, likes, comments and gifts on the live and
the sum of gift values; then click_rate_w = clicks_w / max(exposures_w, 1); live_age_s =
(q - live start) / 1000; viewers_now = clicks before q whose watch_end is not before q (each
exposure's first click and its first watch_end, ``viewer_times``). Only events strictly before
q count, so the features are causal. Vectorised: per-live sorted times (``SegmentedTimes``),
searchsorted and prefix sums; no loop over queries or lives.

Gift values are summed exactly: each value becomes a 2^-32 fixed-point integer pair
(``fixed_point``) and window sums are differences of integer prefix sums, converted to float
once (``from_fixed``). Integer sums do not depend on where they start, so the same window gives
the same float whether the index holds the whole log or one time range of one live.

Time-range splits (the Beam engine, ``mcjax.samples.beam``): an index may hold only the events
of a time range [b, e) of some lives, plus, per live, a ``Carry``: the live's counts before b
that the ``all`` window and ``viewers_now`` need (``carry_totals`` computes the per-range
totals they are summed from). The 30 s and 5 min windows of a query q >= b + 5 min lie in the
range and need no carry.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.eventlog import schema as S
from mcjax.moment.events import NEVER
from mcjax.moment.timeindex import SegmentedTimes, by_segment
from mcjax.contract import schema as SS

WINDOW_MS = {"30s": 30_000, "5m": 300_000}  # "all" starts at the live's start
MAX_WINDOW_MS = max(WINDOW_MS.values())
COUNTED = {"exposures": S.EXPOSURE, "clicks": S.CLICK, "likes": S.LIKE,
           "comments": S.COMMENT, "gifts": S.GIFT}
FRACTION_BITS = 32
# Carry columns, per live: the ``all`` counts of COUNTED since the live's start, the gift
# value since the start (fixed point: integer part, fraction), viewers entered and left.
CARRY_COLUMNS = tuple(COUNTED) + ("gift_hi", "gift_lo", "entered", "left")


def fixed_point(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """float64 values -> (integer part, fraction in units of 2^-32), both int64 (exact for
  |value| < 2^52 up to the fraction's rounding)."""
  value = np.asarray(value, np.float64)
  hi = np.floor(value)
  lo = np.rint((value - hi) * 2.0 ** FRACTION_BITS)
  return hi.astype(np.int64), lo.astype(np.int64)


def from_fixed(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
  """An integer fixed-point sum (``fixed_point`` units) -> float64."""
  return np.asarray(hi, np.float64) + np.asarray(lo, np.float64) * 2.0 ** -FRACTION_BITS


def viewer_times(live: np.ndarray, click: np.ndarray, watch: np.ndarray) -> dict:
  """Viewer entries and exits of live exposures from their first click and watch_end times
  (NEVER: none): an exposure enters at its click and leaves at max(watch_end, click) when it
  has both. Returns the ``CrowdIndex`` keyword arguments enter_live/ts, leave_live/ts."""
  clicked = click != NEVER
  leaves = clicked & (watch != NEVER)
  return {"enter_live": live[clicked], "enter_ts": click[clicked],
          "leave_live": live[leaves], "leave_ts": np.maximum(watch, click)[leaves]}


def live_start(live: np.ndarray, first_ts: np.ndarray, known: np.ndarray,
               table_start: np.ndarray) -> np.ndarray:
  """The start of each row's live: lives.start_ms (``table_start``) where the live is in
  lives.parquet (``known``), else the earliest ``first_ts`` (its first exposure) of the rows of
  the same live. Rows may be exposures or per-live partial minima (the same answer)."""
  ids, inverse = np.unique(live, return_inverse=True)
  earliest = np.full(len(ids), NEVER, np.int64)
  np.minimum.at(earliest, inverse.reshape(-1), first_ts)
  return np.where(known, table_start, earliest[inverse.reshape(-1)])


@dataclasses.dataclass(frozen=True)
class Carry:
  """Per live, what happened before the index's time range (see the module docstring)."""
  live: np.ndarray    # (m,) int64, sorted
  totals: np.ndarray  # (m, len(CARRY_COLUMNS)) int64

  def of(self, live: np.ndarray) -> np.ndarray:
    """(n, len(CARRY_COLUMNS)) carry of each live (0 for lives without one)."""
    out = np.zeros((len(live), len(CARRY_COLUMNS)), np.int64)
    if len(self.live):
      pos = np.minimum(np.searchsorted(self.live, live), len(self.live) - 1)
      hit = self.live[pos] == live
      out[hit] = self.totals[pos[hit]]
    return out


def carry_totals(live, ts, code, value, live_start, viewers: dict,
                 range_of) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per (live, time range) totals of the ``Carry`` columns: what a range adds to the carry of
  every later range. The ``all`` counts take the events at or after their live's start.

  Args:
    live, ts, code, value: live-domain events, as for ``CrowdIndex``.
    live_start: (n,) the start of each event's live.
    viewers: ``viewer_times`` of the same lives.
    range_of: maps int64 times to int64 range indexes (non-decreasing).

  Returns (live, range, totals (m, len(CARRY_COLUMNS))), one row per (live, range), sorted.
  """
  since = ts >= live_start
  parts = []
  for name, event in COUNTED.items():
    m = (code == S.EVENT_CODE[event]) & since
    parts.append((live[m], ts[m], name, np.ones(int(m.sum()), np.int64)))
  gift = (code == S.EVENT_CODE[S.GIFT]) & since
  hi, lo = fixed_point(value[gift])
  parts += [(live[gift], ts[gift], "gift_hi", hi), (live[gift], ts[gift], "gift_lo", lo)]
  for name, side in (("entered", "enter"), ("left", "leave")):
    t = viewers[f"{side}_ts"]
    parts.append((viewers[f"{side}_live"], t, name, np.ones(len(t), np.int64)))
  lv = np.concatenate([np.asarray(p[0], np.int64) for p in parts])
  rg = range_of(np.concatenate([np.asarray(p[1], np.int64) for p in parts]))
  col = np.concatenate([np.full(len(p[0]), CARRY_COLUMNS.index(p[2])) for p in parts])
  amount = np.concatenate([p[3] for p in parts])
  if not len(lv):
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(CARRY_COLUMNS)),
                                                                  np.int64)
  order = np.lexsort((rg, lv))
  lv, rg, col, amount = lv[order], rg[order], col[order], amount[order]
  new = np.ones(len(lv), bool)
  new[1:] = (lv[1:] != lv[:-1]) | (rg[1:] != rg[:-1])
  group = np.cumsum(new) - 1
  totals = np.zeros((int(new.sum()), len(CARRY_COLUMNS)), np.int64)
  np.add.at(totals, (group, col), amount)
  return lv[new], rg[new], totals


class CrowdIndex:
  """Answers ``CROWD_FEATURES`` for any number of (live, q) queries at once."""

  def __init__(self, live: np.ndarray, ts: np.ndarray, code: np.ndarray, value: np.ndarray,
               enter_live: np.ndarray, enter_ts: np.ndarray,
               leave_live: np.ndarray, leave_ts: np.ndarray, carry: Carry | None = None):
    """Builds the index.

    Args:
      live, ts, code, value: live-domain events (live id, time, EVENT_CODE, value).
      enter_live, enter_ts: the live and first click time of every clicked live exposure.
      leave_live, leave_ts: the live and first watch_end time of those that ended.
      carry: per live, the totals before the events given (None: they are all the events).
    """
    self.series = {}
    for name, event in COUNTED.items():
      m = code == S.EVENT_CODE[event]
      self.series[name] = SegmentedTimes(live[m], ts[m])
    gift = code == S.EVENT_CODE[S.GIFT]
    order = self.series["gifts"].order
    self.gift_cumsum = [np.concatenate([[0], np.cumsum(part[order])])
                        for part in fixed_point(value[gift])]
    self.viewer_in = SegmentedTimes(enter_live, enter_ts)
    self.viewer_out = SegmentedTimes(leave_live, leave_ts)
    self.carry = carry

  def features(self, live: np.ndarray, q: np.ndarray, live_start: np.ndarray) -> np.ndarray:
    """(n, len(CROWD_FEATURES)) float32 features of ``live`` at ``q`` (all int64 arrays)."""
    live, q, live_start = (np.asarray(a, np.int64) for a in (live, q, live_start))
    order = by_segment(live, q)  # sorted queries: every searchsorted below sweeps forward
    result = np.empty((len(q), len(SS.CROWD_FEATURES)), np.float32)
    result[order] = self._features(live[order], q[order], live_start[order])
    return result

  def _gift_value(self, begin: np.ndarray, end: np.ndarray, carry=None) -> np.ndarray:
    hi, lo = (c[end] - c[np.minimum(begin, end)] for c in self.gift_cumsum)
    if carry is not None:
      hi, lo = hi + carry[:, CARRY_COLUMNS.index("gift_hi")], \
          lo + carry[:, CARRY_COLUMNS.index("gift_lo")]
    return from_fixed(hi, lo)

  def _features(self, live: np.ndarray, q: np.ndarray, live_start: np.ndarray) -> np.ndarray:
    out = np.zeros((len(q), len(SS.CROWD_FEATURES)), np.float32)
    col = SS.CROWD_INDEX
    carry = self.carry.of(live) if self.carry is not None else None
    end = {name: s.position(live, q, "left") for name, s in self.series.items()}
    for window in SS.CROWD_WINDOWS:
      if window == "all":
        lo, side = live_start, "left"    # [start, q)
      else:
        lo, side = q - WINDOW_MS[window], "right"  # (q - w, q)
      extra = carry if window == "all" else None
      for name, s in self.series.items():
        begin = s.position(live, lo, side)
        count = np.maximum(end[name] - begin, 0)
        if extra is not None:
          count = count + extra[:, CARRY_COLUMNS.index(name)]
        out[:, col[f"{name}_{window}"]] = count
        if name == "gifts":
          out[:, col[f"gift_value_{window}"]] = self._gift_value(begin, end[name], extra)
      out[:, col[f"click_rate_{window}"]] = (
          out[:, col[f"clicks_{window}"]] / np.maximum(out[:, col[f"exposures_{window}"]], 1.0))
    out[:, col["live_age_s"]] = (q - live_start) / 1000.0
    entered = self.viewer_in.position(live, q) - self.viewer_in.segment_start(live)
    left = self.viewer_out.position(live, q) - self.viewer_out.segment_start(live)
    if carry is not None:
      entered = entered + carry[:, CARRY_COLUMNS.index("entered")]
      left = left + carry[:, CARRY_COLUMNS.index("left")]
    out[:, col["viewers_now"]] = entered - left
    return out
