"""Named presets and knobs of the simulated Kuaishou world.

A ``WorldConfig`` fixes every size and effect strength of the world; ``make_config`` picks a
preset (``small`` for tests, ``default`` for ``make run``, ``m3like`` for the default sizes
with KuaiLive-M3-like timing: entries at the impression, a low entry rate, long watch tails)
and applies overrides.  A new knob's default keeps the existing presets' logs byte-identical.
The diurnal curves (when users are active, when streamers go live) also live here, as
functions of the hour of day.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Event time starts at 2025-05-01 00:00:00 UTC.
EPOCH_MS = 1_746_057_600_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes and effect strengths of one simulated world."""
  # Sizes.
  users: int = 4000
  authors: int = 300
  hours: int = 24
  topics: int = 16
  videos_per_author: float = 12.0          # mean; every video author posts at least one
  live_exposures: int = 180_000             # expected live exposures over the whole log
  sv_ratio: float = 9.0                     # short-video exposures per live exposure
  # Population.
  live_sparse_share: float = 0.4            # users who almost never see a live
  live_sparse_weight: float = 0.02          # their live-exposure weight relative to others
  activity_sigma: float = 0.5               # lognormal spread of user activity
  live_author_share: float = 0.45           # authors who go live
  live_author_video_share: float = 0.85     # of those, share who also post short videos
  sessions_per_live_author: float = 1.0     # mean live sessions per live author per day
  live_minutes_median: float = 60.0         # live duration: lognormal, clipped to [15, 300] min
  live_minutes_sigma: float = 0.6
  popularity_sigma: float = 0.8             # lognormal spread of author popularity
  # Interests and familiarity.
  interest_sigma: float = 1.0               # user interest logits over topics ~ N(0, s^2)
  topic_temperature: float = 1.2            # short-video topic choice ~ softmax(t * interest)
  familiar_authors: float = 6.0             # mean authors a user is familiar with
  familiar_sv_share: float = 0.35           # short-video plays drawn from familiar authors
  follower_feed_share: float = 0.2          # live exposures sent to the author's familiar users
  # Click model: logit = base + affinity + highlight.
  click_bias: float = -2.5
  click_activity: float = 0.4               # * log(user activity)
  click_popularity: float = 0.3             # * log(author popularity)
  click_hour: float = 0.3                   # * cos(2 pi (hour - 21) / 24)
  affinity_interest: float = 0.8            # * user interest in the author's topic
  affinity_familiarity: float = 1.2         # * familiarity (0 for unfamiliar authors)
  # Highlights.
  highlights_per_hour: float = 2.5          # Poisson, at least one per session
  highlight_minutes: tuple[float, float] = (2.0, 6.0)
  highlight_strength: tuple[float, float] = (1.0, 2.0)   # added to the click logit
  highlight_rate_gain: float = 1.0          # interaction rates * (1 + gain * strength)
  highlight_watch_gain: float = 0.4         # watch time * exp(gain * strength)
  # Live feedback.
  # Click delay after the exposure: click_delay_min_s + exponential(mean click_delay_s), cut at
  # click_delay_max_s.
  click_delay_min_s: float = 1.0
  click_delay_s: float = 3.0
  click_delay_max_s: float = 30.0
  bounce_share: float = 0.15                # short views: U(0.5, 3) s
  watch_median_s: float = 150.0
  watch_sigma: float = 1.0
  like_per_min: float = 2.0                 # per viewer, outside highlights
  comment_per_min: float = 0.5
  gift_per_min: float = 0.03
  gift_pareto_alpha: float = 1.3
  follow_bias: float = -4.0
  # Short-video feedback.
  sv_like_bias: float = -3.0
  sv_follow_bias: float = -6.5


PRESETS = {
    "default": WorldConfig(),
    # Few lives, so each still draws a crowd in which highlights show.
    "small": WorldConfig(users=600, authors=60, topics=8, videos_per_author=6.0,
                         live_exposures=10_000, live_author_share=0.25),
    # KuaiLive-M3's timing at the default world's sizes, so that it differs from `default` in
    # timing and rates only (and takes about as long to generate, ~10 s): a user enters a room
    # at the impression or within a second or two (the M3 converter puts every entry at its
    # impression), about 7% of live exposures are entered (a quarter in `default`), visits are
    # heavy-tailed (30% bounces, the rest lognormal around 40 s: median visit ~36 s, p99 ~36
    # min), and highlights cover about a fifth of room time (3 per hour of 2-6 min).
    "m3like": WorldConfig(click_bias=-4.4, click_delay_min_s=0.0, click_delay_s=0.5,
                          click_delay_max_s=5.0, bounce_share=0.3, watch_median_s=40.0,
                          watch_sigma=1.6, highlights_per_hour=3.0),
}

SIZE_FLAGS = ("users", "authors", "hours", "topics", "live_exposures")


def make_config(preset: str = "default", **overrides) -> WorldConfig:
  """Returns the named preset with ``overrides`` (field -> value; None values ignored)."""
  if preset not in PRESETS:
    raise ValueError(f"--preset={preset!r}: expected one of {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(WorldConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown world setting(s) {unknown}")
  cfg = dataclasses.replace(PRESETS[preset],
                            **{k: v for k, v in overrides.items() if v is not None})
  for name in SIZE_FLAGS:
    if getattr(cfg, name) <= 0:
      raise ValueError(f"--{name} must be positive, got {getattr(cfg, name)}")
  if cfg.topics > cfg.authors:
    raise ValueError(f"--topics={cfg.topics} exceeds --authors={cfg.authors}")
  return cfg


def _bump(hour: np.ndarray, center: float, width: float) -> np.ndarray:
  d = (hour - center + 12.0) % 24.0 - 12.0
  return np.exp(-0.5 * (d / width) ** 2)


def user_activity_curve(hour: np.ndarray) -> np.ndarray:
  """Relative user activity at ``hour`` of day: low at night, lunch bump, evening peak."""
  hour = np.asarray(hour, np.float64) % 24.0
  return 0.15 + 0.35 * _bump(hour, 12.5, 1.5) + 1.0 * _bump(hour, 21.0, 2.5)


def live_start_curve(hour: np.ndarray) -> np.ndarray:
  """Relative rate of live-session starts at ``hour`` of day, peaking 20:00-23:00."""
  hour = np.asarray(hour, np.float64) % 24.0
  return 0.08 + 0.25 * _bump(hour, 12.0, 1.5) + 1.0 * _bump(hour, 20.5, 1.5)
