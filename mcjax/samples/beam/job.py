"""The Beam graph of the sample engine (its file reading, writing and finishing step are in
``files``, how batches travel between stages in ``transport``).

``run(log_dir, out_dir, cfg, ...)`` reads the log's Parquet files (every table may be one file
or a folder of parts), runs the stages of ``stages`` keyed as the features need them, writes
the sample parts and the per-bucket history stores into ``out_dir/.beam/`` (out_dir: the
caller's staging folder, on a file system every worker sees), then, in the launching process,
assembles ``out_dir/train/`` and ``out_dir/eval/`` exactly as ``shards.write_samples`` lays
them out, and returns the engine's stats.

    read row groups ──> events (exposure bucket) ─┬─> rows ────────────────────────────┐
      │   └─ live exposure events ─> lives join ──┘   crowd events, queries ─> crowd ──┤
      │                                    carry totals ─> carry scan ─┘  (live, range) │
      │                                    plays ─> videos join ─┐                       │
      │                                    live records, queries ┴─> histories (user) ──┤
      │                                    authors ─> authors join ───────────────────> join
      └── side tables, routed to the joins                          (exposure bucket) ─┘
                                                                  └─> write (split, time range)

What one worker holds: one exposure bucket's events (stage E); one (live bucket, time range)'s
counted events (crowd); one user bucket's history records (histories); one write range's
samples (write). The launching process holds only file lists, per-bucket counts, and, while
finishing, one part's sample times and one history piece at a time (copied through
memory-mapped files).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from mcjax.eventlog import schema as ES
from mcjax.samples.beam import stages
from mcjax.samples.beam.files import (SPLITS, ReadEvents, WriteParts, engine_stats,
                                      event_extent, finish, folder_bytes, load_json,
                                      read_table, read_tasks, save_json)
from mcjax.samples.beam.transport import Spill, routed, values
from mcjax.moment.config import MomentConfig
from mcjax.contract import schema as SS
from mcjax.samples import shards

SCRATCH = ".beam"
_SIDE = {"users": ("users.parquet", "user_id"), "authors": ("authors.parquet", "author_id"),
         "lives": ("lives.parquet", "live_id"), "videos": ("videos.parquet", "video_id"),
         "oracle": (f"{ES.ORACLE_DIR}/exposures.parquet", "exposure_id")}
_E_TAGS = ("rows_train", "rows_eval", "crowd_queries", "crowd_events", "crowd_viewers",
           "carry_totals", "live_starts", "crowd_marks", "lv_records", "user_queries", "plays",
           "author_requests")


class UserBounds(beam.CombineFn):
  """Sorted user ids cutting users.parquet into about ``buckets`` equal ranges (from a
  bounded sample of the ids: any cut gives the same samples, only the balance changes)."""

  def __init__(self, buckets: int, cap: int = 1 << 14):
    self.buckets, self.cap = buckets, cap

  def _thin(self, ids):
    ids = np.unique(ids)
    if len(ids) > self.cap:
      ids = ids[np.linspace(0, len(ids) - 1, self.cap).astype(np.int64)]
    return ids

  def create_accumulator(self):
    return np.zeros(0, np.int64)

  def add_input(self, acc, ids):
    return self._thin(np.concatenate([acc, np.asarray(ids, np.int64)]))

  def merge_accumulators(self, accs):
    return self._thin(np.concatenate(list(accs)))

  def extract_output(self, acc):
    if len(acc) == 0 or self.buckets == 1:
      return np.zeros(0, np.int64)
    picks = (np.arange(1, self.buckets) * len(acc)) // self.buckets
    return np.unique(acc[picks])


class SumStats(beam.CombineFn):
  """Sums dicts of counts (keys "max/...": the largest value instead)."""

  def create_accumulator(self):
    return {}

  def add_input(self, acc, stats):
    for k, v in stats.items():
      acc[k] = max(acc.get(k, 0), int(v)) if k.startswith("max/") else acc.get(k, 0) + int(v)
    return acc

  def merge_accumulators(self, accs):
    out = {}
    for acc in accs:
      self.add_input(out, acc)
    return out

  def extract_output(self, acc):
    return acc


# ---------------------------------------------------------------------------- stages

class Stage(beam.DoFn):
  """Runs a ``stages`` function on one key's grouped batches; its (tag, key, batch) outputs
  become tagged (key, batch) elements (key None: this element's key; tag "stats": counts)."""

  def __init__(self, spill: Spill, fn, inputs: tuple, side: tuple = (), **kwargs):
    self.spill, self.fn, self.inputs, self.side, self.kwargs = spill, fn, inputs, side, kwargs

  def process(self, element, *side):
    key, grouped = element
    args = [values(grouped, name) for name in self.inputs]
    kwargs = dict(zip(self.side, side), **self.kwargs)
    yield from routed(self.spill, self.fn(*args, **kwargs), key)


class Histories(beam.DoFn):
  """``stages.histories`` of one user bucket; saves its stores as pieces in the scratch
  folder (idempotent: a retried bundle rewrites the same files)."""

  def __init__(self, spill: Spill, scratch: str, cfg: MomentConfig, layout: stages.Layout):
    self.spill, self.scratch, self.cfg, self.layout = spill, scratch, cfg, layout

  def process(self, element):
    (bucket,), grouped = element
    out = stages.histories(bucket, values(grouped, "plays"), values(grouped, "records"),
                           values(grouped, "queries"), values(grouped, "users"), self.cfg,
                           self.layout)
    rest = []
    for tag, key, batch in out:
      if tag == "stores":
        sizes = {}
        for p, store in batch.items():
          store.save(os.path.join(self.scratch, "history", p, f"{bucket:06d}"))
          sizes[p] = len(store)
        yield beam.pvalue.TaggedOutput("pieces", (bucket, sizes))
      else:
        rest.append((tag, key, batch))
    yield from routed(self.spill, rest)


class Join(beam.DoFn):
  def __init__(self, spill: Spill, layout: stages.Layout):
    self.spill, self.layout = spill, layout

  def process(self, element, pieces):
    _, g = element
    offsets = {}
    for p in SS.DOMAINS:
      sizes = np.zeros(max([b for b, _ in pieces], default=0) + 2, np.int64)
      for b, s in pieces:
        sizes[b + 1] = s[p]
      offsets[p] = np.cumsum(sizes)
    rows = {split: values(g, f"rows_{split}") for split in SPLITS}
    joined = stages.join(rows, values(g, "crowd"), values(g, "histories"),
                         values(g, "authors"), values(g, "oracle"), offsets, self.layout)
    # one run file per split, a slice per write range
    for _, key, value in self.spill.route_all((f"samples_{split}", (split, key[0]), table)
                                              for split, key, table in joined):
      yield key, value


# ---------------------------------------------------------------------------- the graph

def build_pipeline(p: beam.Pipeline, log_dir: str, scratch: str, cfg: MomentConfig,
                   layout: stages.Layout, *, batch_rows: int, block_size: int, num_shards,
                   check_types: bool) -> None:
  """Adds the engine's transforms to ``p`` (reads ``log_dir``, writes into ``scratch``)."""
  where = os.path.basename(os.path.normpath(log_dir))
  spill = Spill(os.path.join(scratch, "spill"), layout.spill_rows)
  ev = (p | "event row groups" >> beam.Create(read_tasks(log_dir, ES.EVENTS_FILE))
        | "spread reads" >> beam.Reshuffle()
        | "read events" >> beam.ParDo(ReadEvents(
            spill, layout, batch_rows, check_types, os.path.join(where, ES.EVENTS_FILE)))
        .with_outputs("live_exposures", "events", "stats"))
  side = {}
  for name, (file, _) in _SIDE.items():
    side[name] = (p | f"{name} row groups" >> beam.Create(read_tasks(log_dir, file))
                  | f"spread {name}" >> beam.Reshuffle()
                  | f"read {name}" >> beam.Map(read_table, check_types, where))
  bounds = beam.pvalue.AsSingleton(
      side["users"] | beam.Map(lambda t: t["user_id"].to_numpy())
      | "user bounds" >> beam.CombineGlobally(UserBounds(layout.buckets)))

  def spilled(routes):
    """(key, batch) of (tag, key, part) routes, each part spilled once (the salts of one
    bucket get the same part)."""
    part = ref = None
    for tag, k, v in routes:
      if v is not part:
        part, ref = v, spill(tag, v)
      yield k, ref

  def routed(name, salted, user_keyed=False):
    key = _SIDE[name][1]
    if user_keyed:
      return side[name] | f"route {name}" >> beam.FlatMap(
          lambda t, b: spilled(stages.table_routes(name, t, key, layout, False, bounds=b)),
          bounds)
    return side[name] | f"route {name}" >> beam.FlatMap(
        lambda t: spilled(stages.table_routes(name, t, key, layout, salted)))

  def stage(fn, inputs, side=(), **kwargs):
    return Stage(spill, fn, inputs, side, **kwargs)

  lives = ({"x": ev.live_exposures, "lives": routed("lives", True)}
           | "group lives" >> beam.CoGroupByKey()
           | "join lives" >> beam.ParDo(stage(stages.join_lives, ("x", "lives"), layout=layout))
           .with_outputs("live_exposures", "stats"))
  e = ({"events": ev.events, "live_exposures": lives.live_exposures}
       | "group exposures" >> beam.CoGroupByKey()
       | "exposures" >> beam.ParDo(
           stage(stages.exposures, ("events", "live_exposures"), ("user_bounds",), cfg=cfg,
                 layout=layout), bounds).with_outputs("stats", *_E_TAGS))
  scan = ({"totals": e.carry_totals, "starts": e.live_starts, "marks": e.crowd_marks}
          | "group carries" >> beam.CoGroupByKey()
          | "carry scan" >> beam.ParDo(stage(stages.carry_scan, ("totals", "starts", "marks"),
                                             layout=layout)).with_outputs("crowd_carry"))
  crowd = ({"events": e.crowd_events, "viewers": e.crowd_viewers, "queries": e.crowd_queries,
            "carry": scan.crowd_carry}
           | "group crowd ranges" >> beam.CoGroupByKey()
           | "crowd" >> beam.ParDo(stage(stages.crowd_range,
                                         ("events", "viewers", "queries", "carry"),
                                         layout=layout)).with_outputs("crowd", "stats"))
  videos = ({"plays": e.plays, "videos": routed("videos", True)}
            | "group videos" >> beam.CoGroupByKey()
            | "join videos" >> beam.ParDo(stage(stages.join_videos, ("plays", "videos"),
                                                ("user_bounds",)), bounds)
            .with_outputs("plays", "stats"))
  authors = ({"requests": e.author_requests, "authors": routed("authors", True)}
             | "group authors" >> beam.CoGroupByKey()
             | "join authors" >> beam.ParDo(stage(stages.join_authors, ("requests", "authors"),
                                                  layout=layout))
             .with_outputs("authors", "stats"))
  hist = ({"plays": videos.plays, "records": e.lv_records, "queries": e.user_queries,
           "users": routed("users", False, user_keyed=True)}
          | "group users" >> beam.CoGroupByKey()
          | "histories" >> beam.ParDo(Histories(spill, scratch, cfg, layout)).with_outputs(
              "histories", "pieces", "stats"))
  pieces = beam.pvalue.AsList(hist.pieces)
  oracle = side["oracle"] | "route oracle" >> beam.FlatMap(
      lambda t: spilled(stages.table_routes("oracle", t, "exposure_id", layout, False)))
  parts = ({"rows_train": e.rows_train, "rows_eval": e.rows_eval, "crowd": crowd.crowd,
            "histories": hist.histories, "authors": authors.authors, "oracle": oracle}
           | "group samples" >> beam.CoGroupByKey()
           | "join" >> beam.ParDo(Join(spill, layout), pieces)
           | "group write ranges" >> beam.GroupByKey()
           | "write" >> beam.ParDo(WriteParts(scratch, layout, block_size, num_shards)))
  # One key, grouped: exactly one writer of each file (a global combine may also emit its
  # empty default from another worker, which would overwrite the list).
  (parts | "key parts" >> beam.Map(lambda x: (0, x)) | "all parts" >> beam.GroupByKey()
   | "save parts" >> beam.MapTuple(lambda _, xs: save_json(
       sorted(xs, key=lambda x: (x["split"], x["name"])), os.path.join(scratch, "parts.json"))))
  (hist.pieces | "key pieces" >> beam.Map(lambda x: (0, x)) | "all pieces" >> beam.GroupByKey()
   | "save pieces" >> beam.MapTuple(lambda _, xs: save_json(
       sorted(xs), os.path.join(scratch, "pieces.json"))))
  ((ev.stats, e.stats, lives.stats, crowd.stats, videos.stats, authors.stats, hist.stats)
   | "stats" >> beam.Flatten()
   | "key stats" >> beam.Map(lambda x: (0, x))
   | "sum stats" >> beam.CombinePerKey(SumStats())
   | "save stats" >> beam.MapTuple(lambda _, x: save_json(x, os.path.join(scratch,
                                                                            "stats.json"))))


def pipeline_options(args) -> PipelineOptions:
  """Beam's own flags (``--runner``, ``--direct_num_workers``, ...). No runner named: Beam's
  local ``FnApiRunner`` (what the DirectRunner itself runs this pipeline on, with the same
  ``--direct_*`` flags), because the DirectRunner first tries the Prism runner, which it
  downloads. Refuses flags Beam does not know, naming them."""
  options = PipelineOptions(list(args or []))
  known = options.get_all_options()
  unknown = [a for a in options.get_all_options(retain_unknown_options=True) if a not in known]
  if unknown:
    raise ValueError(f"unknown pipeline flag(s) {sorted(unknown)}")
  if options.view_as(StandardOptions).runner is None:
    options.view_as(StandardOptions).runner = "FnApiRunner"
  return options


def run(log_dir: str, out_dir: str, cfg: MomentConfig, *, pipeline_args=None,
        layout: stages.Layout | None = None, batch_rows: int = 1 << 18,
        block_size: int = shards.DEFAULT_BLOCK_SIZE, num_shards=None,
        check_types: bool = False, metadata: dict | None = None) -> dict:
  """Runs the engine on the log ``log_dir`` and assembles the splits in ``out_dir`` (an empty
  staging folder, removed by the caller on failure). Returns {"counts", "stats",
  "largest_key" (the most rows one key held, per stage), "pipeline_s", "finish_s"}.

  ``check_types``: check every table's columns, types and nulls as it is read (what
  ``--novalidate`` keeps; a log validated at the door needs none).
  """
  cfg.validate()
  rows, span_ms = event_extent(log_dir)
  layout = (layout or stages.Layout()).validate().resolve(rows, span_ms)
  scratch = os.path.join(out_dir, SCRATCH)
  os.makedirs(scratch, exist_ok=True)
  options = pipeline_options(pipeline_args)
  start = time.perf_counter()
  p = beam.Pipeline(options=options)
  build_pipeline(p, os.path.abspath(log_dir), scratch, cfg, layout, batch_rows=batch_rows,
                 block_size=block_size, num_shards=num_shards, check_types=check_types)
  result = p.run()
  state = result.wait_until_finish()
  if state not in (PipelineState.DONE, None):
    raise RuntimeError(f"the Beam pipeline ended in state {state}")
  pipeline_s = time.perf_counter() - start
  raw = load_json(os.path.join(scratch, "stats.json"), {})
  stats = engine_stats(raw)
  if stats["events"] != rows:  # a runner that drops elements must not pass for a build
    read = raw.get("events_read", 0)
    raise RuntimeError(f"the Beam pipeline lost events: {stats['events']:,} of the {rows:,} "
                       f"rows of {ES.EVENTS_FILE} reached the engine ({read:,} were read); "
                       f"nothing was written")
  largest = {k[len("max/"):]: v for k, v in sorted(raw.items()) if k.startswith("max/")}
  if stats["late_clicks"]:
    logging.warning("%d click(s) came after no_click_close_s=%s and were ignored; raise "
                    "no_click_close_s above the click delay", stats["late_clicks"],
                    cfg.no_click_close_s)
  counts, largest["write range: samples"] = finish(scratch, out_dir, metadata or {},
                                                   block_size)
  written = {split: sum(kinds.values()) for split, kinds in counts.items()}
  if (written["train"], written["eval"]) != (stats["train_samples"], stats["eval_records"]):
    raise RuntimeError(f"the Beam pipeline lost samples: the engine made "
                       f"{stats['train_samples']:,} train samples and {stats['eval_records']:,} "
                       f"evaluation records, {written['train']:,} and {written['eval']:,} were "
                       f"written; nothing was kept")
  spilled = folder_bytes(os.path.join(scratch, "spill"))
  shutil.rmtree(scratch)
  return {"counts": counts, "stats": stats, "largest_key": largest, "pipeline_s": pipeline_s,
          "finish_s": time.perf_counter() - start - pipeline_s, "spill_bytes": spilled,
          "layout": dataclasses.asdict(layout)}
