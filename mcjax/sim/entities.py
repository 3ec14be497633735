"""The people and items of the simulated world.

Users carry latent interest logits over topics (shared by both domains), an activity level
and a live-sparse flag; authors carry a topic and a popularity, and many of them both post
short videos and go live under the same id.  A per (user, author) familiarity links the two
domains: it raises the user's short-video plays of the author and the user's click
probability on the author's lives.  Live sessions start on an evening-heavy curve and carry
hidden highlight moments.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcjax.sim import config as C


@dataclasses.dataclass
class Entities:
  """Arrays describing the world (index = id for users, authors, videos and lives)."""
  # Users.
  interest: np.ndarray        # [U, K] interest logits
  activity: np.ndarray        # [U] activity level (mean 1)
  live_sparse: np.ndarray     # [U] bool
  age_bucket: np.ndarray      # [U]
  gender: np.ndarray          # [U]
  like_propensity: np.ndarray  # [U] multiplier of interaction rates
  # Authors.
  topic: np.ndarray           # [A]
  popularity: np.ndarray      # [A] (mean 1)
  is_live_author: np.ndarray  # [A] bool
  is_video_author: np.ndarray  # [A] bool
  # Familiarity, as CSR by user: fam_author[fam_ptr[u]:fam_ptr[u+1]] with fam_value.
  fam_ptr: np.ndarray
  fam_author: np.ndarray
  fam_value: np.ndarray
  # Videos (contiguous per author; author a owns video_ptr[a]:video_ptr[a+1]).
  video_author: np.ndarray
  video_ptr: np.ndarray
  video_tag: np.ndarray
  video_duration_s: np.ndarray
  # Lives, sorted by start.
  live_author: np.ndarray
  live_start_ms: np.ndarray   # relative to the epoch
  live_end_ms: np.ndarray
  # Highlights, sorted by (live, start).
  hl_live: np.ndarray
  hl_start_ms: np.ndarray
  hl_end_ms: np.ndarray
  hl_strength: np.ndarray

  def familiarity(self, users: np.ndarray, authors: np.ndarray) -> np.ndarray:
    """Familiarity of each (users[i], authors[i]) pair (0 where unfamiliar)."""
    n_authors = len(self.topic)
    owner = np.repeat(np.arange(len(self.fam_ptr) - 1), np.diff(self.fam_ptr))
    keys = owner.astype(np.int64) * n_authors + self.fam_author
    query = users.astype(np.int64) * n_authors + authors
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    hit = (keys[pos] == query) if len(keys) else np.zeros(len(query), bool)
    return np.where(hit, self.fam_value[pos] if len(keys) else 0.0, 0.0)

  def affinity(self, cfg: C.WorldConfig, users: np.ndarray, authors: np.ndarray) -> np.ndarray:
    """The click model's user-author affinity term."""
    return (cfg.affinity_interest * self.interest[users, self.topic[authors]]
            + cfg.affinity_familiarity * self.familiarity(users, authors))


def _lognormal_mean1(rng: np.random.Generator, sigma: float, n: int) -> np.ndarray:
  return rng.lognormal(-0.5 * sigma ** 2, sigma, n)


def _users(cfg: C.WorldConfig, rng: np.random.Generator) -> dict:
  n = cfg.users
  interest = rng.normal(0.0, cfg.interest_sigma, (n, cfg.topics))
  return dict(
      interest=interest,
      activity=_lognormal_mean1(rng, cfg.activity_sigma, n),
      live_sparse=rng.random(n) < cfg.live_sparse_share,
      age_bucket=rng.integers(0, 7, n).astype(np.int32),
      gender=rng.integers(0, 2, n).astype(np.int32),
      like_propensity=_lognormal_mean1(rng, 0.6, n),
  )


def _authors(cfg: C.WorldConfig, rng: np.random.Generator) -> dict:
  n = cfg.authors
  # Every topic gets at least one author; the rest are drawn uniformly.
  topic = np.concatenate([np.arange(cfg.topics), rng.integers(0, cfg.topics, n - cfg.topics)])
  topic = rng.permutation(topic)
  is_live = rng.random(n) < cfg.live_author_share
  is_video = ~is_live | (rng.random(n) < cfg.live_author_video_share)
  # Every topic keeps at least one video author, so any interest can be served.
  first_of_topic = np.zeros(n, bool)
  first_of_topic[np.unique(topic, return_index=True)[1]] = True
  is_video |= first_of_topic
  return dict(topic=topic.astype(np.int64),
              popularity=_lognormal_mean1(rng, cfg.popularity_sigma, n),
              is_live_author=is_live, is_video_author=is_video)


def _familiarity(cfg: C.WorldConfig, rng: np.random.Generator, users: dict,
                 authors: dict) -> dict:
  """Each user knows a few authors, drawn by interest in their topic and popularity."""
  n_users, n_authors = cfg.users, cfg.authors
  counts = np.minimum(1 + rng.poisson(cfg.familiar_authors - 1, n_users), n_authors)
  # Gumbel top-k without replacement: score = log weight + Gumbel noise.
  logw = (cfg.topic_temperature * users["interest"][:, authors["topic"]]
          + np.log(authors["popularity"])[None, :])
  scores = logw + rng.gumbel(size=(n_users, n_authors))
  order = np.argsort(-scores, axis=1, kind="stable")
  take = np.arange(n_authors)[None, :] < counts[:, None]
  # Sorted per user, so (user, author) keys are globally sorted.
  fam_author = np.sort(np.where(take, order, n_authors), axis=1)
  fam_author = fam_author[fam_author < n_authors]
  fam_ptr = np.concatenate([[0], np.cumsum(counts)])
  fam_value = rng.uniform(0.5, 2.0, len(fam_author))
  return dict(fam_ptr=fam_ptr, fam_author=fam_author.astype(np.int64), fam_value=fam_value)


def _videos(cfg: C.WorldConfig, rng: np.random.Generator, authors: dict) -> dict:
  counts = np.where(authors["is_video_author"],
                    1 + rng.poisson(cfg.videos_per_author - 1, cfg.authors), 0)
  video_ptr = np.concatenate([[0], np.cumsum(counts)])
  n = int(video_ptr[-1])
  return dict(video_author=np.repeat(np.arange(cfg.authors), counts),
              video_ptr=video_ptr,
              video_tag=rng.integers(0, 4 * cfg.topics, n).astype(np.int32),
              video_duration_s=np.clip(rng.lognormal(np.log(25.0), 0.6, n), 5.0, 300.0))


def sample_times(rng: np.random.Generator, curve, hours: int, n: int) -> np.ndarray:
  """``n`` times in ms within [0, hours) drawn from a per-minute diurnal ``curve``."""
  minutes = np.arange(hours * 60)
  cdf = np.cumsum(curve(minutes / 60.0))
  m = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
  return ((m + rng.random(n)) * C.MINUTE_MS).astype(np.int64)


def _lives(cfg: C.WorldConfig, rng: np.random.Generator, authors: dict) -> dict:
  live_authors = np.flatnonzero(authors["is_live_author"])
  per_author = rng.poisson(cfg.sessions_per_live_author * cfg.hours / 24.0, len(live_authors))
  author = np.repeat(live_authors, per_author)
  start = sample_times(rng, C.live_start_curve, cfg.hours, len(author))
  minutes = np.clip(rng.lognormal(np.log(cfg.live_minutes_median), cfg.live_minutes_sigma,
                                  len(author)), 15.0, 300.0)
  end = np.minimum(start + (minutes * C.MINUTE_MS).astype(np.int64), cfg.hours * C.HOUR_MS)
  # A streamer runs one session at a time: drop sessions overlapping the previous one.
  order = np.lexsort((start, author))
  author, start, end = author[order], start[order], end[order]
  prev_end = np.concatenate([[-1], end[:-1]])
  same = np.concatenate([[False], author[1:] == author[:-1]])
  keep = ~(same & (start < prev_end)) & (end - start >= 5 * C.MINUTE_MS)
  author, start, end = author[keep], start[keep], end[keep]
  order = np.lexsort((author, start))
  return dict(live_author=author[order], live_start_ms=start[order], live_end_ms=end[order])


def _highlights(cfg: C.WorldConfig, rng: np.random.Generator, lives: dict) -> dict:
  """A few non-overlapping highlight episodes per live, each a few minutes long."""
  start, end = lives["live_start_ms"], lives["live_end_ms"]
  dur_min = (end - start) / C.MINUTE_MS
  lo, hi = cfg.highlight_minutes
  count = np.maximum(1, rng.poisson(cfg.highlights_per_hour * dur_min / 60.0))
  count = np.minimum(count, np.floor(dur_min / (2 * hi)).astype(np.int64) + 1)
  live = np.repeat(np.arange(len(start)), count)
  # Slot j of n: the live is cut into n equal slots; each episode sits at random in its slot.
  rank = np.arange(len(live)) - np.repeat(np.cumsum(count) - count, count)
  slot_ms = (end - start)[live] / count[live]
  length = np.minimum(rng.uniform(lo, hi, len(live)) * C.MINUTE_MS, 0.8 * slot_ms)
  hs = start[live] + rank * slot_ms + rng.random(len(live)) * (slot_ms - length)
  hs = hs.astype(np.int64)
  he = hs + length.astype(np.int64)
  return dict(hl_live=live.astype(np.int64), hl_start_ms=hs, hl_end_ms=he,
              hl_strength=rng.uniform(*cfg.highlight_strength, len(live)))


def build_entities(cfg: C.WorldConfig, rng: np.random.Generator) -> Entities:
  """Draws users, authors, familiarity, videos, lives and highlights."""
  users = _users(cfg, rng)
  authors = _authors(cfg, rng)
  fam = _familiarity(cfg, rng, users, authors)
  videos = _videos(cfg, rng, authors)
  lives = _lives(cfg, rng, authors)
  highlights = _highlights(cfg, rng, lives)
  if len(lives["live_author"]) == 0:
    raise ValueError("the world has no live session; raise --authors or --hours")
  return Entities(**users, **authors, **fam, **videos, **lives, **highlights)


def highlight_strength_at(ent: Entities, live: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
  """Strength of the highlight live[i] is in at time t_ms[i] (0 outside highlights)."""
  if len(ent.hl_live) == 0:
    return np.zeros(len(live))
  shift = np.int64(1) << 40
  keys = ent.hl_live * shift + ent.hl_start_ms
  query = live.astype(np.int64) * shift + t_ms
  pos = np.searchsorted(keys, query, side="right") - 1
  safe = np.maximum(pos, 0)
  inside = (pos >= 0) & (ent.hl_live[safe] == live) & (t_ms < ent.hl_end_ms[safe])
  return np.where(inside, ent.hl_strength[safe], 0.0)
