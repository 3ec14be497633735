"""Delayed, timestamped feedback on each exposure, and the click oracle.

Live: a logistic click model (base + user-author affinity + highlight strength) decides the
click, which follows the impression after a delay (a fixed minimum plus an exponential, cut at
a maximum: a few seconds in the default world, mostly under a second in ``m3like``); the
viewer then stays in the room for a bounce (< 3 s) or a lognormal watch, longer when the click
came in a highlight; during the watch likes, comments and gifts arrive as Poisson processes
whose rates rise while the live is in a highlight (drawn by thinning), and a follow may happen.
Short video: the play progress (a fraction of the video, > 1 on replays), like and follow
depend on the same affinity; the play ends with a watch_end whose value is the seconds played
(progress x the video's duration_s, cut to whole ms, so watch_end ts = exposure ts + value).
Every feedback event lies at or after its exposure; interactions lie inside the watch (or
play).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.eventlog import schema as S
from mcjax.sim import config as C
from mcjax.sim.entities import Entities, highlight_strength_at
from mcjax.sim.traffic import LiveExposures, VideoExposures


@dataclasses.dataclass
class Feedback:
  """Feedback events of one domain; ``exposure`` indexes that domain's exposure arrays."""
  ts_ms: np.ndarray
  exposure: np.ndarray
  event: np.ndarray   # schema.EVENT_CODE
  value: np.ndarray


@dataclasses.dataclass
class ClickOracle:
  p_click: np.ndarray
  p_click_no_highlight: np.ndarray
  p_click_no_affinity: np.ndarray
  in_highlight: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _concat(parts: list[Feedback]) -> Feedback:
  return Feedback(*(np.concatenate([getattr(p, f.name) for p in parts])
                    for f in dataclasses.fields(Feedback)))


def _single(ts, exposure, code, value=None) -> Feedback:
  value = np.zeros(len(ts)) if value is None else value
  return Feedback(ts.astype(np.int64), exposure.astype(np.int64),
                  np.full(len(ts), S.EVENT_CODE[code], np.int8), value.astype(np.float64))


def click_oracle(cfg: C.WorldConfig, ent: Entities, ex: LiveExposures) -> ClickOracle:
  """True click probabilities of the live exposures, with and without each effect."""
  author = ent.live_author[ex.live]
  hour = (ex.ts_ms / C.HOUR_MS) % 24.0
  base = (cfg.click_bias + cfg.click_activity * np.log(ent.activity[ex.user])
          + cfg.click_popularity * np.log(ent.popularity[author])
          + cfg.click_hour * np.cos(2 * np.pi * (hour - 21.0) / 24.0))
  aff = ent.affinity(cfg, ex.user, author)
  hl = highlight_strength_at(ent, ex.live, ex.ts_ms)
  return ClickOracle(p_click=_sigmoid(base + aff + hl),
                     p_click_no_highlight=_sigmoid(base + aff),
                     p_click_no_affinity=_sigmoid(base + hl),
                     in_highlight=hl > 0)


def _thinned(rng: np.random.Generator, ent: Entities, live: np.ndarray, start: np.ndarray,
             end: np.ndarray, rate_per_s: np.ndarray, gain: float, max_strength: float):
  """Poisson events on [start, end) at rate * (1 + gain * highlight strength(t)).

  Returns (row, ts_ms): the watch each event belongs to and its time.
  """
  top = 1.0 + gain * max_strength
  n = rng.poisson(rate_per_s * top * (end - start) / 1000.0)
  row = np.repeat(np.arange(len(start)), n)
  ts = start[row] + (rng.random(len(row)) * (end - start)[row]).astype(np.int64)
  strength = highlight_strength_at(ent, live[row], ts)
  keep = rng.random(len(row)) * top < 1.0 + gain * strength
  order = np.lexsort((ts[keep], row[keep]))
  return row[keep][order], ts[keep][order]


def _click_delay_ms(cfg: C.WorldConfig, rng: np.random.Generator, n: int) -> np.ndarray:
  """Entry delays after the impression: min + exponential(mean), cut at max, in whole ms."""
  delay = cfg.click_delay_min_s * 1000.0 + rng.exponential(cfg.click_delay_s * 1000.0, n)
  return np.minimum(delay, cfg.click_delay_max_s * 1000.0).astype(np.int64)


def live_feedback(cfg: C.WorldConfig, ent: Entities, ex: LiveExposures, oracle: ClickOracle,
                  rng: np.random.Generator) -> Feedback:
  """Click, watch_end, like, comment, gift and follow events of the live exposures."""
  n = len(ex.ts_ms)
  clicked = np.flatnonzero(rng.random(n) < oracle.p_click)
  live, user = ex.live[clicked], ex.user[clicked]
  author = ent.live_author[live]
  aff = ent.affinity(cfg, user, author)
  click_ts = ex.ts_ms[clicked] + _click_delay_ms(cfg, rng, len(clicked))
  s_click = highlight_strength_at(ent, live, click_ts)
  watch_s = np.where(
      rng.random(len(clicked)) < cfg.bounce_share,
      rng.uniform(0.5, 3.0, len(clicked)),
      rng.lognormal(np.log(cfg.watch_median_s) + 0.3 * aff + cfg.highlight_watch_gain * s_click,
                    cfg.watch_sigma))
  watch_ms = np.clip((watch_s * 1000.0).astype(np.int64), 1,
                     np.maximum(ent.live_end_ms[live] - click_ts, 1))
  end_ts = click_ts + watch_ms
  parts = [_single(click_ts, clicked, S.CLICK),
           _single(end_ts, clicked, S.WATCH_END, watch_ms / 1000.0)]

  prop = ent.like_propensity[user] * np.exp(0.3 * aff)
  top = cfg.highlight_strength[1]
  for code, per_min in ((S.LIKE, cfg.like_per_min), (S.COMMENT, cfg.comment_per_min),
                        (S.GIFT, cfg.gift_per_min)):
    row, ts = _thinned(rng, ent, live, click_ts, end_ts, prop * per_min / 60.0,
                       cfg.highlight_rate_gain, top)
    value = None
    if code == S.GIFT:
      value = np.round((1.0 - rng.random(len(row))) ** (-1.0 / cfg.gift_pareto_alpha), 2)
    parts.append(_single(ts, clicked[row], code, value))

  follows = rng.random(len(clicked)) < _sigmoid(cfg.follow_bias + aff + s_click)
  f_ts = click_ts + (rng.random(len(clicked)) * watch_ms).astype(np.int64)
  parts.append(_single(f_ts[follows], clicked[follows], S.FOLLOW))
  return _concat(parts)


def video_feedback(cfg: C.WorldConfig, ent: Entities, ex: VideoExposures,
                   rng: np.random.Generator) -> Feedback:
  """watch_end (seconds played), like and follow events of the short-video exposures."""
  n = len(ex.ts_ms)
  idx = np.arange(n)
  author = ent.video_author[ex.video]
  aff = ent.affinity(cfg, ex.user, author)
  progress = np.clip(rng.lognormal(-0.6 + 0.35 * aff, 0.7), 0.01, 3.0)
  play_ms = np.maximum((progress * ent.video_duration_s[ex.video] * 1000.0).astype(np.int64), 1)
  parts = [_single(ex.ts_ms + play_ms, idx, S.WATCH_END, play_ms / 1000.0)]
  during = ex.ts_ms + (rng.random(n) * play_ms).astype(np.int64)
  likes = rng.random(n) < _sigmoid(cfg.sv_like_bias + aff + np.log(ent.like_propensity[ex.user]))
  parts.append(_single(during[likes], idx[likes], S.LIKE))
  during = ex.ts_ms + (rng.random(n) * play_ms).astype(np.int64)
  follows = rng.random(n) < _sigmoid(cfg.sv_follow_bias + aff)
  parts.append(_single(during[follows], idx[follows], S.FOLLOW))
  return _concat(parts)
