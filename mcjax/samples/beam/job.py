"""The Beam graph of the sample engine, its writers, and the finishing step.

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
import json
import os
import pickle
import shutil
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from mcjax.eventlog import io as log_io
from mcjax.eventlog import schema as ES
from mcjax.eventlog import validate as V
from mcjax.moment import events
from mcjax.samples.beam import cols as C
from mcjax.samples.beam import stages
from mcjax.moment.config import MomentConfig
from mcjax.contract import history_store as H
from mcjax.contract import schema as SS
from mcjax.samples import shards
from mcjax.samples.table import conform_stored, kind_counts

SCRATCH = ".beam"
SPLITS = ("train", "eval")
_SIDE = {"users": ("users.parquet", "user_id"), "authors": ("authors.parquet", "author_id"),
         "lives": ("lives.parquet", "live_id"), "videos": ("videos.parquet", "video_id"),
         "oracle": (f"{ES.ORACLE_DIR}/exposures.parquet", "exposure_id")}
_E_TAGS = ("rows_train", "rows_eval", "crowd_queries", "crowd_events", "crowd_viewers",
           "carry_totals", "live_starts", "crowd_marks", "lv_records", "user_queries", "plays",
           "author_requests")
STAT_KEYS = ("live_exposures", "train_samples", "eval_records", "events", "orphan_events",
             "events_before_exposure", "duplicate_exposure_events", "unknown_users",
             "unknown_lives", "unknown_authors", "unknown_videos", "sv_plays_without_duration",
             "late_clicks", "ignored_without_click", "ignored_after_close")


# ---------------------------------------------------------------------------- elements

class Batch:
  """A column batch as one element value: Beam's default coder pickles it in one call (a
  plain dict would be encoded key by key, one pickle per array: 3x slower to code)."""

  __slots__ = ("cols",)

  def __init__(self, cols: dict):
    self.cols = cols

  def __reduce__(self):
    return Batch, (self.cols,)


class Spilled:
  """A batch saved in the scratch folder: only its file name travels through the runner."""

  __slots__ = ("path",)

  def __init__(self, path: str):
    self.path = path

  def __reduce__(self):
    return Spilled, (self.path,)

  def load(self):
    with open(self.path, "rb") as f:
      return pickle.load(f)


class Slice:
  """Rows [start, stop) of a run file (a record array saved by ``Spill.routes``): only its
  name and bounds travel; loading reads those rows through a memory map."""

  __slots__ = ("path", "start", "stop")

  def __init__(self, path: str, start: int, stop: int):
    self.path, self.start, self.stop = path, start, stop

  def __reduce__(self):
    return Slice, (self.path, self.start, self.stop)

  def load(self) -> dict:
    rows = np.load(self.path, mmap_mode="r")[self.start:self.stop]
    return {name: np.array(rows[name]) for name in rows.dtype.names}


class Spill:
  """How batches travel between stages: the way a MapReduce shuffle moves data. All the
  batches one call of a stage sends under one tag (one per destination key) are written as
  one *run file* in the scratch folder (every worker sees it), and each key gets a ``Slice``
  of it: what the runner shuffles and buffers is names and row bounds, so its memory does not
  grow with the log, and a worker holds only the key it is working on (its slices, read
  through memory maps). Outputs of fewer than ``min_rows`` rows in all (or every output,
  ``min_rows`` 0) travel inline as ``Batch``es. Files are never modified (a retried bundle
  writes new ones) and go with the scratch folder."""

  def __init__(self, folder: str, min_rows: int):
    self.folder, self.min_rows = folder, min_rows

  def _path(self, tag: str, ext: str) -> str:
    path = os.path.join(self.folder, tag, f"{uuid.uuid4().hex}.{ext}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def __call__(self, tag: str, value):
    """One element's value: a column batch (dict) or a side table's rows (``pa.Table``)."""
    rows = value.num_rows if isinstance(value, pa.Table) else C.length(value)
    if not self.min_rows or rows < self.min_rows:
      return Batch(value)
    path = self._path(tag, "pkl")
    with open(path, "wb") as f:
      pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    return Spilled(path)

  def routes(self, tag: str, pieces: list) -> list:
    """(key, value) for each (key, column batch) of ``pieces`` (batches with the same
    columns): slices of one run file, or inline batches when they are small."""
    total = sum(C.length(c) for _, c in pieces)
    if not self.min_rows or total < self.min_rows:
      return [(k, Batch(c)) for k, c in pieces]
    first = pieces[0][1]
    run = np.empty(total, np.dtype([(n, v.dtype, v.shape[1:]) for n, v in first.items()]))
    out, at = [], 0
    path = self._path(tag, "npy")
    for k, c in pieces:
      n = C.length(c)
      for name, v in c.items():
        run[name][at:at + n] = v
      out.append((k, Slice(path, at, at + n)))
      at += n
    np.save(path, run)
    return out

  def route_all(self, outputs) -> list:
    """(tag, key, value) for each (tag, key, column batch) of ``outputs``: each tag's batches
    through ``routes`` (one run file per tag)."""
    by_tag = {}
    for tag, key, batch in outputs:
      by_tag.setdefault(tag, []).append((key, batch))
    return [(tag, key, value) for tag, pieces in by_tag.items()
            for key, value in self.routes(tag, pieces)]


def _routed(spill: Spill, outputs, default_key=None):
  """The tagged elements of a stage's (tag, key, batch) outputs: "stats" counts as they come,
  then the rest through ``spill.route_all`` (key None: ``default_key``)."""
  rest = []
  for tag, key, batch in outputs:
    if tag == "stats":
      yield beam.pvalue.TaggedOutput("stats", batch)
    else:
      rest.append((tag, default_key if key is None else key, batch))
  for tag, key, value in spill.route_all(rest):
    yield beam.pvalue.TaggedOutput(tag, (key, value))


def _cols(v):
  """A travelled value's content: an inline ``Batch``'s, or a ``Spilled`` or ``Slice`` loaded."""
  return v.cols if isinstance(v, Batch) else v.load()


def _values(grouped, name: str) -> list:
  return [_cols(v) for v in grouped.get(name, ())]


# ---------------------------------------------------------------------------- reading

def _footer(path: str):
  try:
    return pq.ParquetFile(path).metadata
  except (pa.ArrowException, OSError) as e:
    raise log_io.UnreadableTableError(path, f"unreadable Parquet file ({type(e).__name__}: "
                                      f"{' '.join(str(e).split())})") from e


def read_tasks(log_dir: str, name: str) -> list[tuple]:
  """(table name, path, row group, first row of the row group in the table) of every row
  group of a log table (a file or a folder of parts, in ``io.table_files`` order); [] for an
  absent oracle table. Only the files' footers are read."""
  path = log_io.table_path(log_dir, name)
  if name.startswith(ES.ORACLE_DIR) and not os.path.exists(path):
    return []
  out, row = [], 0
  for f in log_io.table_files(path):
    meta = _footer(f)
    for rg in range(meta.num_row_groups):
      out.append((name, f, rg, row))
      row += meta.row_group(rg).num_rows
  return out


def event_extent(log_dir: str) -> tuple[int, int]:
  """(rows, time span in ms) of the event table, from the files' footers (the ``ts_ms``
  statistics; the column itself where a row group has none)."""
  rows, lo, hi = 0, None, None
  for f in log_io.table_files(log_io.table_path(log_dir, ES.EVENTS_FILE)):
    meta = _footer(f)
    rows += meta.num_rows
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if "ts_ms" not in names:
      continue  # the pipeline names the missing column when it reads the file
    col = names.index("ts_ms")
    for rg in range(meta.num_row_groups):
      st = meta.row_group(rg).column(col).statistics
      if st is not None and st.has_min_max:
        a, b = int(st.min), int(st.max)
      else:
        ts = pq.ParquetFile(f).read_row_group(rg, columns=["ts_ms"])["ts_ms"]
        if not len(ts) or ts.null_count:
          continue
        a, b = int(ts.to_numpy().min()), int(ts.to_numpy().max())
      lo, hi = a if lo is None else min(lo, a), b if hi is None else max(hi, b)
  return rows, (hi - lo + 1) if lo is not None else 1


class ReadEvents(beam.DoFn):
  """A row group of the event table -> column batches of at most ``batch_rows`` rows, with
  each row's index in the whole table (``seq``: the log's order), routed to their keys."""

  def __init__(self, spill: Spill, layout: stages.Layout, batch_rows: int, check_types: bool,
               where: str):
    self.spill, self.layout, self.batch_rows = spill, layout, batch_rows
    self.check_types, self.where = check_types, where

  def process(self, task):
    _, path, rg, first = task
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[rg]):
      table = pa.Table.from_batches([batch])
      if self.check_types:  # --novalidate: still name a NaN id by file, column and row
        V.conform(table, ES.EVENT_SCHEMA, self.where, first_row=first)
      cols = events.event_columns(table)
      cols["seq"] = first + np.arange(table.num_rows, dtype=np.int64)
      first += table.num_rows
      yield from _routed(self.spill, stages.route_events(cols, self.layout))
      yield beam.pvalue.TaggedOutput("stats", {"events_read": table.num_rows})


def _read_table(task, check_types: bool, where: str) -> pa.Table:
  name, path, rg, first = task
  table = pq.ParquetFile(path).read_row_group(rg)
  if check_types:
    schema = ES.SIDE_TABLES.get(name) or ES.ORACLE_TABLES[os.path.basename(name)]
    V.conform(table, schema, os.path.join(where, name), first_row=first)
  return table


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
    args = [_values(grouped, name) for name in self.inputs]
    kwargs = dict(zip(self.side, side), **self.kwargs)
    yield from _routed(self.spill, self.fn(*args, **kwargs), key)


class Histories(beam.DoFn):
  """``stages.histories`` of one user bucket; saves its stores as pieces in the scratch
  folder (idempotent: a retried bundle rewrites the same files)."""

  def __init__(self, spill: Spill, scratch: str, cfg: MomentConfig, layout: stages.Layout):
    self.spill, self.scratch, self.cfg, self.layout = spill, scratch, cfg, layout

  def process(self, element):
    (bucket,), grouped = element
    out = stages.histories(bucket, _values(grouped, "plays"), _values(grouped, "records"),
                           _values(grouped, "queries"), _values(grouped, "users"), self.cfg,
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
    yield from _routed(self.spill, rest)


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
    rows = {split: _values(g, f"rows_{split}") for split in SPLITS}
    joined = stages.join(rows, _values(g, "crowd"), _values(g, "histories"),
                         _values(g, "authors"), _values(g, "oracle"), offsets, self.layout)
    # one run file per split, a slice per write range
    for _, key, value in self.spill.route_all((f"samples_{split}", (split, key[0]), table)
                                              for split, key, table in joined):
      yield key, value


class WriteParts(beam.DoFn):
  """One (split, write range): its samples sorted and written as parts of at most
  ``part_rows`` samples into the scratch folder; yields their descriptions."""

  def __init__(self, scratch: str, layout: stages.Layout, block_size: int, num_shards):
    self.scratch, self.layout = scratch, layout
    self.block_size, self.num_shards = block_size, num_shards

  def process(self, element):
    (split, w), tables = element
    table = stages.sort_part(C.concat([_cols(t) for t in tables]))
    n = C.length(table)
    for i, lo in enumerate(range(0, n, self.layout.part_rows)):
      chunk = conform_stored(C.take(table, slice(lo, lo + self.layout.part_rows)))
      name = f"{w:013d}-{i:05d}"
      folder = os.path.join(self.scratch, "parts", split, name)
      shutil.rmtree(folder, ignore_errors=True)
      os.makedirs(os.path.dirname(folder), exist_ok=True)
      shards.write_part(chunk, folder, split, block_size=self.block_size,
                        num_shards=self.num_shards)
      ts_path = os.path.join(self.scratch, "ts", split, f"{name}.npy")
      os.makedirs(os.path.dirname(ts_path), exist_ok=True)
      np.save(ts_path, chunk["sample_ts_ms"])
      yield {"split": split, "name": name, "num_samples": C.length(chunk),
             "kinds": kind_counts(chunk)}


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path)
             for n in names)


def _load_json(path: str, missing):
  """The JSON file's content; ``missing`` when the pipeline wrote none (no element)."""
  if not os.path.exists(path):
    return missing
  with open(path) as f:
    return json.load(f)


def _save_json(obj, path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, sort_keys=True)


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
                  | f"read {name}" >> beam.Map(_read_table, check_types, where))
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
   | "save parts" >> beam.MapTuple(lambda _, xs: _save_json(
       sorted(xs, key=lambda x: (x["split"], x["name"])), os.path.join(scratch, "parts.json"))))
  (hist.pieces | "key pieces" >> beam.Map(lambda x: (0, x)) | "all pieces" >> beam.GroupByKey()
   | "save pieces" >> beam.MapTuple(lambda _, xs: _save_json(
       sorted(xs), os.path.join(scratch, "pieces.json"))))
  ((ev.stats, e.stats, lives.stats, crowd.stats, videos.stats, authors.stats, hist.stats)
   | "stats" >> beam.Flatten()
   | "key stats" >> beam.Map(lambda x: (0, x))
   | "sum stats" >> beam.CombinePerKey(SumStats())
   | "save stats" >> beam.MapTuple(lambda _, x: _save_json(x, os.path.join(scratch,
                                                                            "stats.json"))))


# ---------------------------------------------------------------------------- finishing

def _engine_stats(raw: dict) -> dict:
  """The pipeline's summed counts in the shape of ``SampleBuilder.stats``."""
  out = {k: raw.get(k, 0) for k in STAT_KEYS}
  out["samples"] = {SS.KIND_NAMES[k]: raw.get(f"samples/{SS.KIND_NAMES[k]}", 0)
                    for k in SS.KIND_NAMES if k != SS.EVAL}
  if "labels_after_slow" in raw:
    out["labels_after_slow"] = raw["labels_after_slow"]
  return out


def finish(scratch: str, out_dir: str, metadata: dict, block_size: int) -> tuple[dict, int]:
  """Assembles ``out_dir/<split>/`` from the scratch folder (parts renamed in time order,
  sample times and history pieces concatenated); returns the kind counts per split and the
  most samples of one (split, write range)."""
  parts, pieces = (_load_json(os.path.join(scratch, n), []) for n in ("parts.json",
                                                                     "pieces.json"))
  buckets = sorted(b for b, _ in pieces)
  counts = {}
  for split in SPLITS:
    mine = sorted((p for p in parts if p["split"] == split), key=lambda p: p["name"])
    if not mine:
      raise ValueError(f"write_samples: split {split!r} has no samples")
    built = os.path.join(out_dir, split)
    os.makedirs(built)
    listed, ts, kinds = [], [], {}
    for i, part in enumerate(mine):
      name = f"part-{i:05d}"
      os.rename(os.path.join(scratch, "parts", split, part["name"]),
                os.path.join(built, name))
      listed.append({"dir": name, "num_samples": part["num_samples"]})
      ts.append(np.load(os.path.join(scratch, "ts", split, f"{part['name']}.npy")))
      for k, v in part["kinds"].items():
        kinds[k] = kinds.get(k, 0) + v
    records = {}
    for p in SS.DOMAINS:
      records[p] = H.concat_saved(
          [os.path.join(scratch, "history", p, f"{b:06d}") for b in buckets],
          os.path.join(built, shards.HISTORY_DIR, p), p)
    shards.finish_split(built, split, listed, np.concatenate(ts), kinds, records, block_size,
                        metadata)
    counts[split] = kinds
  per_range = {}
  for part in parts:
    key = (part["split"], part["name"].split("-")[0])
    per_range[key] = per_range.get(key, 0) + part["num_samples"]
  return counts, max(per_range.values())


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
  raw = _load_json(os.path.join(scratch, "stats.json"), {})
  stats = _engine_stats(raw)
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
  spilled = _folder_bytes(os.path.join(scratch, "spill"))
  shutil.rmtree(scratch)
  return {"counts": counts, "stats": stats, "largest_key": largest, "pipeline_s": pipeline_s,
          "finish_s": time.perf_counter() - start - pipeline_s, "spill_bytes": spilled,
          "layout": dataclasses.asdict(layout)}
