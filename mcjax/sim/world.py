"""Generates a whole simulated world and writes it as an event-log folder.

``generate_world`` runs the stages (entities, live traffic, short-video traffic, feedback,
assembly) from one ``numpy.random.default_rng(seed)``, so a seed fixes every byte;
``write_world`` writes the result with ``mcjax.eventlog.io.write_log`` plus a ``meta.json``.
Ids: users and authors are numbered from 0; lives from ``LIVE_ID_BASE``; short videos from
``VIDEO_ID_BASE`` (so a live id can never be mistaken for a video id).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import numpy as np
import pyarrow as pa

from mcjax.version import __version__
from mcjax.eventlog import io as eio
from mcjax.eventlog import schema as S
from mcjax.sim import config as C
from mcjax.sim import entities, feedback, traffic

LIVE_ID_BASE = 1_000_000_000
VIDEO_ID_BASE = 2_000_000_000
STAGES = ("entities", "live traffic", "short-video traffic", "feedback", "assembly")
META_FILE = "meta.json"

# Order of events of one exposure that share a millisecond.
_RANK = np.zeros(len(S.EVENTS), np.int8)
_RANK[S.EVENT_CODE[S.CLICK]] = 1
for _e in (S.LIKE, S.COMMENT, S.GIFT, S.FOLLOW):
  _RANK[S.EVENT_CODE[_e]] = 2
_RANK[S.EVENT_CODE[S.WATCH_END]] = 3


@dataclasses.dataclass
class World:
  """A generated world: the tables of the log folder plus its metadata."""
  events: pa.Table
  side: dict[str, pa.Table]
  oracle: dict[str, pa.Table]
  meta: dict


def _strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
  return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int8)),
                                        pa.array(list(names))).cast(pa.string())


def _quantile_bucket(x: np.ndarray, buckets: int) -> np.ndarray:
  edges = np.quantile(x, np.linspace(0, 1, buckets + 1)[1:-1])
  return np.searchsorted(edges, x, side="right").astype(np.int32)


def _side_tables(ent: entities.Entities) -> dict[str, pa.Table]:
  n_users, n_authors = len(ent.activity), len(ent.topic)
  n_videos, n_lives = len(ent.video_author), len(ent.live_author)
  return {
      "users.parquet": pa.table({
          "user_id": np.arange(n_users, dtype=np.int64), "age_bucket": ent.age_bucket,
          "gender": ent.gender, "activity_bucket": _quantile_bucket(ent.activity, 4)}),
      "authors.parquet": pa.table({
          "author_id": np.arange(n_authors, dtype=np.int64),
          "category": ent.topic.astype(np.int32),
          "fans_bucket": _quantile_bucket(ent.popularity, 5),
          "is_live_author": ent.is_live_author, "is_video_author": ent.is_video_author}),
      "lives.parquet": pa.table({
          "live_id": LIVE_ID_BASE + np.arange(n_lives, dtype=np.int64),
          "author_id": ent.live_author.astype(np.int64),
          "category": ent.topic[ent.live_author].astype(np.int32),
          "start_ms": C.EPOCH_MS + ent.live_start_ms, "end_ms": C.EPOCH_MS + ent.live_end_ms}),
      "videos.parquet": pa.table({
          "video_id": VIDEO_ID_BASE + np.arange(n_videos, dtype=np.int64),
          "author_id": ent.video_author.astype(np.int64),
          "category": ent.topic[ent.video_author].astype(np.int32),
          "tag": ent.video_tag, "duration_s": ent.video_duration_s.astype(np.float32)}),
  }


def _assemble(ent, live_ex, sv_ex, live_fb, sv_fb) -> tuple[pa.Table, np.ndarray]:
  """Events table sorted by (ts_ms, exposure_id, event order); returns it and live ids."""
  n_live, n_sv = len(live_ex.ts_ms), len(sv_ex.ts_ms)
  # Exposure ids follow exposure time (live first on ties).
  ts = np.concatenate([live_ex.ts_ms, sv_ex.ts_ms])
  dom = np.concatenate([np.zeros(n_live, np.int8), np.ones(n_sv, np.int8)])
  order = np.lexsort((np.arange(n_live + n_sv), dom, ts))
  exp_id = np.empty(n_live + n_sv, np.int64)
  exp_id[order] = np.arange(n_live + n_sv)
  live_id, sv_id = exp_id[:n_live], exp_id[n_live:]
  live_author = ent.live_author[live_ex.live]
  sv_author = ent.video_author[sv_ex.video]
  live_x, sv_x = live_fb.exposure, sv_fb.exposure
  n_lfb, n_sfb = len(live_x), len(sv_x)
  exposure = S.EVENT_CODE[S.EXPOSURE]
  # Four parts, in this order: live exposures, live feedback, short-video ones, their feedback.
  cols = {
      "ts_ms": [live_ex.ts_ms, live_fb.ts_ms, sv_ex.ts_ms, sv_fb.ts_ms],
      "user_id": [live_ex.user, live_ex.user[live_x], sv_ex.user, sv_ex.user[sv_x]],
      "exposure_id": [live_id, live_id[live_x], sv_id, sv_id[sv_x]],
      "domain": [np.full(n_live + n_lfb, S.DOMAIN_CODE[S.LIVE]),
                 np.full(n_sv + n_sfb, S.DOMAIN_CODE[S.SHORT_VIDEO])],
      "item_id": [LIVE_ID_BASE + live_ex.live, LIVE_ID_BASE + live_ex.live[live_x],
                  VIDEO_ID_BASE + sv_ex.video, VIDEO_ID_BASE + sv_ex.video[sv_x]],
      "author_id": [live_author, live_author[live_x], sv_author, sv_author[sv_x]],
      "event": [np.full(n_live, exposure), live_fb.event, np.full(n_sv, exposure), sv_fb.event],
      "value": [np.zeros(n_live), live_fb.value, np.zeros(n_sv), sv_fb.value],
  }
  cols = {k: np.concatenate(v) for k, v in cols.items()}
  cols["ts_ms"] = cols["ts_ms"] + C.EPOCH_MS
  order = np.lexsort((_RANK[cols["event"]], cols["exposure_id"], cols["ts_ms"]))
  cols = {k: v[order] for k, v in cols.items()}
  table = pa.table({
      "ts_ms": cols["ts_ms"].astype(np.int64), "user_id": cols["user_id"].astype(np.int64),
      "exposure_id": cols["exposure_id"], "domain": _strings(cols["domain"], S.DOMAINS),
      "item_id": cols["item_id"].astype(np.int64), "author_id": cols["author_id"].astype(np.int64),
      "event": _strings(cols["event"], S.EVENTS), "value": cols["value"].astype(np.float64)},
      schema=S.EVENT_SCHEMA)
  return table, live_id


def generate_world(cfg: C.WorldConfig, seed: int, *, preset: str = "custom",
                   on_stage: Callable[[str], None] | None = None) -> World:
  """Simulates a world; ``on_stage(name)`` is called after each of ``STAGES``."""
  rng = np.random.default_rng(seed)
  done = on_stage or (lambda name: None)
  ent = entities.build_entities(cfg, rng)
  done(STAGES[0])
  live_ex = traffic.live_exposures(cfg, ent, rng)
  done(STAGES[1])
  sv_ex = traffic.video_exposures(cfg, ent, rng, len(live_ex.ts_ms))
  done(STAGES[2])
  oracle = feedback.click_oracle(cfg, ent, live_ex)
  live_fb = feedback.live_feedback(cfg, ent, live_ex, oracle, rng)
  sv_fb = feedback.video_feedback(cfg, ent, sv_ex, rng)
  done(STAGES[3])
  events, live_ids = _assemble(ent, live_ex, sv_ex, live_fb, sv_fb)
  order = np.argsort(live_ids)
  oracle_tables = {
      "highlights.parquet": pa.table({
          "live_id": LIVE_ID_BASE + ent.hl_live, "start_ms": C.EPOCH_MS + ent.hl_start_ms,
          "end_ms": C.EPOCH_MS + ent.hl_end_ms, "strength": ent.hl_strength.astype(np.float32)}),
      "exposures.parquet": pa.table({
          "exposure_id": live_ids[order],
          "p_click": oracle.p_click[order].astype(np.float32),
          "p_click_no_highlight": oracle.p_click_no_highlight[order].astype(np.float32),
          "p_click_no_affinity": oracle.p_click_no_affinity[order].astype(np.float32),
          "in_highlight": oracle.in_highlight[order]}),
  }
  meta = {
      "preset": preset, "seed": int(seed), "mcjax_version": __version__,
      "epoch_ms": C.EPOCH_MS, "hours": cfg.hours,
      "config": dataclasses.asdict(cfg),
      "sizes": {"users": cfg.users, "authors": cfg.authors,
                "videos": int(len(ent.video_author)), "lives": int(len(ent.live_author)),
                "highlights": int(len(ent.hl_live)), "live_exposures": int(len(live_ex.ts_ms)),
                "short_video_exposures": int(len(sv_ex.ts_ms)), "events": events.num_rows},
      "id_bases": {"live": LIVE_ID_BASE, "video": VIDEO_ID_BASE},
  }
  done(STAGES[4])
  return World(events=events, side=_side_tables(ent), oracle=oracle_tables, meta=meta)


def write_world(out_dir: str, world: World, *, overwrite: bool = False) -> str:
  """Writes ``world`` as a log folder (with ``meta.json``); returns its path."""
  meta = json.dumps(world.meta, indent=2, sort_keys=True).encode() + b"\n"
  return eio.write_log(out_dir, world.events, world.side, world.oracle, overwrite=overwrite,
                       extra_files={META_FILE: meta})


def build(out_dir: str, preset: str = "default", seed: int = 0, *, overwrite: bool = False,
          on_stage: Callable[[str], None] | None = None, **overrides) -> str:
  """Generates the ``preset`` world (with size ``overrides``) and writes it to ``out_dir``."""
  cfg = C.make_config(preset, **overrides)
  world = generate_world(cfg, seed, preset=preset, on_stage=on_stage)
  return write_world(out_dir, world, overwrite=overwrite)
