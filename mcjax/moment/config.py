"""The Moment engine's settings: how samples are cut from a log, and how features are taken.

``mode`` picks the sample stream:

* ``realtime``: the paper's Moment samples, one per window_s window of an exposure in which a
  label newly fired, plus one CLOSE sample at the exposure's close (see ``windows``).
* ``on_close``: one CLOSE sample per exposure with its final labels (the slow baseline).
* ``fast_slow``: a FAST sample fast_window_s after the exposure and a SLOW correction at
  slow_window_s (the fast/slow-window baseline).

``features_at`` picks the query time of every training sample's features: ``exposure`` (the
request-time view, the same as the evaluation record's) or ``sample`` (the sample's own time).
"""

from __future__ import annotations

import dataclasses
import math

MODES = ("realtime", "on_close", "fast_slow")
FEATURES_AT = ("exposure", "sample")
MAX_HIST_LEN = 10_000


def seconds_to_ms(seconds: float) -> int:
  """Seconds (float) -> whole milliseconds, the log's time unit."""
  return int(round(float(seconds) * 1000.0))


@dataclasses.dataclass(frozen=True)
class MomentConfig:
  """Settings of ``build_samples``; times in seconds, resolved to whole milliseconds."""
  mode: str = "realtime"          # "realtime" | "on_close" | "fast_slow"
  window_s: float = 30.0          # real-time window length
  first_only: bool = True         # False = the no_first_only ablation (positives repeated)
  long_view_s: float = 60.0       # watch >= this fires lvtr, at click_ts + long_view_s
  no_click_close_s: float = 30.0  # an exposure without click closes this long after it
  max_watch_s: float = 3600.0     # an exposure closes at watch_end or after this horizon
  fast_window_s: float = 300.0
  slow_window_s: float = 3600.0
  sv_hist_len: int = 256          # up to MAX_HIST_LEN
  lv_hist_len: int = 64
  features_at: str = "exposure"   # "exposure" (request-time view) | "sample"

  def validate(self) -> "MomentConfig":
    """Raises ValueError naming the field for impossible values; returns self."""
    if self.mode not in MODES:
      raise ValueError(f"MomentConfig.mode={self.mode!r}: expected one of {MODES}")
    if self.features_at not in FEATURES_AT:
      raise ValueError(
          f"MomentConfig.features_at={self.features_at!r}: expected one of {FEATURES_AT}")
    if not isinstance(self.first_only, bool):
      raise ValueError(f"MomentConfig.first_only={self.first_only!r}: expected a bool")
    for name in ("window_s", "long_view_s", "no_click_close_s", "max_watch_s",
                 "fast_window_s", "slow_window_s"):
      value = getattr(self, name)
      is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
      if not (is_number and math.isfinite(value) and seconds_to_ms(value) >= 1):
        raise ValueError(f"MomentConfig.{name}={value!r}: expected a number >= 0.001 (seconds)")
    if self.long_view_s > self.max_watch_s:
      raise ValueError(f"MomentConfig.long_view_s={self.long_view_s} exceeds max_watch_s="
                       f"{self.max_watch_s}: the long-view label could never fire")
    if self.slow_window_s <= self.fast_window_s:
      raise ValueError(f"MomentConfig.slow_window_s={self.slow_window_s} must exceed "
                       f"fast_window_s={self.fast_window_s}")
    for name in ("sv_hist_len", "lv_hist_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_HIST_LEN:
        raise ValueError(f"MomentConfig.{name}={value!r}: expected an int in [0, {MAX_HIST_LEN}]")
    return self

  @property
  def window_ms(self) -> int:
    return seconds_to_ms(self.window_s)

  @property
  def long_view_ms(self) -> int:
    return seconds_to_ms(self.long_view_s)

  @property
  def no_click_close_ms(self) -> int:
    return seconds_to_ms(self.no_click_close_s)

  @property
  def max_watch_ms(self) -> int:
    return seconds_to_ms(self.max_watch_s)

  @property
  def fast_window_ms(self) -> int:
    return seconds_to_ms(self.fast_window_s)

  @property
  def slow_window_ms(self) -> int:
    return seconds_to_ms(self.slow_window_s)
