"""Who is shown what, and when: live and short-video exposures.

Live traffic is concentrated on the lives that are on air: each (live, minute) on air gets a
Poisson number of impressions proportional to the author's popularity and the users' diurnal
activity, so a popular live in the evening has a crowd large enough for its highlights to
show in its click/like/comment rates.  A share of live impressions goes to users familiar
with the author (a follower feed); the rest to users by activity, live-sparse users almost
never.  Short-video traffic (``sv_ratio`` times the live traffic) is spread over all users by
activity; each play is drawn from the user's familiar authors or, by interest, from a topic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.sim import config as C
from mcjax.sim.entities import Entities, sample_times

_CHUNK = 1 << 18


@dataclasses.dataclass
class LiveExposures:
  ts_ms: np.ndarray
  live: np.ndarray
  user: np.ndarray


@dataclasses.dataclass
class VideoExposures:
  ts_ms: np.ndarray
  video: np.ndarray
  user: np.ndarray


def _pick_weighted(rng: np.random.Generator, cum: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray) -> np.ndarray:
  """For each i, an index j in [lo[i], hi[i]) with probability ~ the weight behind ``cum``.

  ``cum`` is the inclusive cumulative sum of the weights of all groups laid end to end.
  """
  base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
  x = base + rng.random(len(lo)) * (cum[hi - 1] - base)
  return np.clip(np.searchsorted(cum, x, side="right"), lo, hi - 1)


def live_exposures(cfg: C.WorldConfig, ent: Entities,
                   rng: np.random.Generator) -> LiveExposures:
  """Draws the live impressions (times, lives, users)."""
  # (live, minute) pairs while the live takes traffic (until a minute before its end).
  w_start = ent.live_start_ms
  w_end = np.maximum(ent.live_end_ms - C.MINUTE_MS, w_start + 1)
  m0 = w_start // C.MINUTE_MS
  n_min = (w_end - 1) // C.MINUTE_MS - m0 + 1
  live = np.repeat(np.arange(len(w_start)), n_min)
  minute = np.repeat(m0, n_min) + np.arange(len(live)) - np.repeat(np.cumsum(n_min) - n_min,
                                                                   n_min)
  lo = np.maximum(minute * C.MINUTE_MS, w_start[live])
  hi = np.minimum((minute + 1) * C.MINUTE_MS, w_end[live])
  rate = (ent.popularity[ent.live_author[live]] * C.user_activity_curve(minute / 60.0)
          * (hi - lo) / C.MINUTE_MS)
  count = rng.poisson(rate * (cfg.live_exposures / rate.sum()))
  live = np.repeat(live, count)
  lo, hi = np.repeat(lo, count), np.repeat(hi, count)
  ts = lo + (rng.random(len(live)) * (hi - lo)).astype(np.int64)

  # Users: follower feed (familiar, not live-sparse users) or the general feed.
  weight = ent.activity * np.where(ent.live_sparse, cfg.live_sparse_weight, 1.0)
  cum = np.cumsum(weight)
  user = np.searchsorted(cum, rng.random(len(live)) * cum[-1], side="right")
  fam_user = np.repeat(np.arange(cfg.users), np.diff(ent.fam_ptr))
  ok = ~ent.live_sparse[fam_user]
  by_author = np.lexsort((fam_user[ok], ent.fam_author[ok]))
  followers = fam_user[ok][by_author]
  f_ptr = np.concatenate([[0], np.cumsum(np.bincount(ent.fam_author[ok], minlength=cfg.authors))])
  author = ent.live_author[live]
  n_f = f_ptr[author + 1] - f_ptr[author]
  feed = (rng.random(len(live)) < cfg.follower_feed_share) & (n_f > 0)
  pick = f_ptr[author] + (rng.random(len(live)) * n_f).astype(np.int64)
  user = np.where(feed, followers[np.minimum(pick, max(len(followers) - 1, 0))], user)
  order = np.lexsort((user, live, ts))
  return LiveExposures(ts_ms=ts[order], live=live[order].astype(np.int64),
                       user=user[order].astype(np.int64))


def video_exposures(cfg: C.WorldConfig, ent: Entities, rng: np.random.Generator,
                    n_live: int) -> VideoExposures:
  """Draws ``sv_ratio * n_live`` short-video impressions in expectation."""
  mean = cfg.sv_ratio * n_live * ent.activity / ent.activity.sum()
  per_user = rng.poisson(mean)
  user = np.repeat(np.arange(cfg.users), per_user).astype(np.int64)
  n = len(user)
  ts = sample_times(rng, C.user_activity_curve, cfg.hours, n)

  # Familiar authors, weighted by familiarity.
  fam_cum = np.cumsum(ent.fam_value)
  lo, hi = ent.fam_ptr[user], ent.fam_ptr[user + 1]
  has_fam = hi > lo
  fam_pick = _pick_weighted(rng, fam_cum, np.where(has_fam, lo, 0),
                            np.where(has_fam, hi, 1))
  fam_author = ent.fam_author[fam_pick]

  # Topic by interest, then a video author of that topic by popularity.
  topic = np.empty(n, np.int64)
  for s in range(0, n, _CHUNK):
    u = user[s:s + _CHUNK]
    p = np.exp(cfg.topic_temperature * (ent.interest[u] - ent.interest[u].max(1, keepdims=True)))
    cdf = np.cumsum(p, axis=1)
    x = rng.random(len(u))[:, None] * cdf[:, -1:]
    topic[s:s + _CHUNK] = np.minimum((cdf < x).sum(1), cfg.topics - 1)
  authors = np.flatnonzero(ent.is_video_author)
  authors = authors[np.lexsort((authors, ent.topic[authors]))]
  a_cum = np.cumsum(ent.popularity[authors])
  t_ptr = np.concatenate([[0], np.cumsum(np.bincount(ent.topic[authors],
                                                     minlength=cfg.topics))])
  topic_author = authors[_pick_weighted(rng, a_cum, t_ptr[topic], t_ptr[topic + 1])]

  use_fam = has_fam & (rng.random(n) < cfg.familiar_sv_share)
  use_fam &= ent.is_video_author[fam_author]
  author = np.where(use_fam, fam_author, topic_author)
  n_vid = ent.video_ptr[author + 1] - ent.video_ptr[author]
  video = ent.video_ptr[author] + (rng.random(n) * n_vid).astype(np.int64)
  order = np.lexsort((video, user, ts))
  return VideoExposures(ts_ms=ts[order], video=video[order], user=user[order])
