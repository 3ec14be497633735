"""The Moment engine's settings: how samples are cut from a log, and how features are taken.

``mode`` picks the sample stream:

* ``realtime``: the paper's Moment samples, one per window_s window of an exposure in which a
  label newly fired, plus one CLOSE sample at the exposure's close (see ``windows``).
* ``on_close``: one CLOSE sample per exposure with its final labels (the slow baseline).
* ``fast_slow``: a FAST sample fast_window_s after the exposure and a SLOW correction at
  slow_window_s (the fast/slow-window baseline).

``features_at`` picks the query time of every training sample's features: ``exposure`` (the
request-time view, the same as the evaluation record's and a serving request's) or ``sample``
(the sample's emission time: a leakage study only, since the emission time depends on the
labels; the trainer refuses it, see ``mcjax.config.validate``).
"""

from __future__ import annotations

import dataclasses
import math

MODES = ("realtime", "on_close", "fast_slow")
CHOICES = {"mode": MODES}  # filled below with features_at
FEATURES_AT = ("exposure", "sample")
CHOICES["features_at"] = FEATURES_AT
MAX_HIST_LEN = 10_000


def seconds_to_ms(seconds: float) -> int:
  """Seconds (float) -> whole milliseconds, the log's time unit."""
  return int(round(float(seconds) * 1000.0))


def _field(default, doc: str):
  return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class MomentConfig:
  """Settings of ``build_samples``; times in seconds, resolved to whole milliseconds."""
  mode: str = _field("realtime", "Sample stream: realtime (Moment), on_close or fast_slow.")
  window_s: float = _field(30.0, "Real-time window length in seconds.")
  first_only: bool = _field(True, "Train each label only the first time it fires (False: the "
                            "no_first_only ablation, positives repeated).")
  long_view_s: float = _field(60.0, "Watch seconds that fire lvtr (at click + long_view_s).")
  no_click_close_s: float = _field(30.0, "An exposure without click closes this long after it.")
  max_watch_s: float = _field(3600.0, "An exposure closes at its watch_end or after this horizon.")
  fast_window_s: float = _field(300.0, "fast_slow mode: the FAST sample's delay in seconds.")
  slow_window_s: float = _field(3600.0, "fast_slow mode: the SLOW correction's delay in seconds.")
  sv_hist_len: int = _field(256, f"Short-video history length (up to {MAX_HIST_LEN}).")
  lv_hist_len: int = _field(64, f"Live history length (up to {MAX_HIST_LEN}).")
  features_at: str = _field("exposure", "Query time of training samples' features: exposure "
                            "(the request-time view) or sample (the sample's own time).")

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
