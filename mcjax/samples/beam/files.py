"""The Beam sample engine's files: reading the log's row groups (``read_tasks``,
``ReadEvents``, ``read_table``), writing sample parts (``WriteParts``), and ``finish``, which
assembles ``out_dir/<split>/`` from the scratch folder in the launching process."""

from __future__ import annotations

import json
import os
import shutil

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mcjax.contract import history_store as H
from mcjax.contract import schema as SS
from mcjax.eventlog import io as log_io
from mcjax.eventlog import schema as ES
from mcjax.eventlog import validate as V
from mcjax.moment import events
from mcjax.samples import shards
from mcjax.samples.beam import cols as C
from mcjax.samples.beam import stages
from mcjax.samples.beam.transport import Spill, cols_of, routed
from mcjax.samples.table import conform_stored, kind_counts

SPLITS = ("train", "eval")
STAT_KEYS = ("live_exposures", "train_samples", "eval_records", "events", "orphan_events",
             "events_before_exposure", "duplicate_exposure_events", "unknown_users",
             "unknown_lives", "unknown_authors", "unknown_videos", "sv_plays_without_duration",
             "late_clicks", "ignored_without_click", "ignored_after_close")


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
      yield from routed(self.spill, stages.route_events(cols, self.layout))
      yield beam.pvalue.TaggedOutput("stats", {"events_read": table.num_rows})


def read_table(task, check_types: bool, where: str) -> pa.Table:
  name, path, rg, first = task
  table = pq.ParquetFile(path).read_row_group(rg)
  if check_types:
    schema = ES.SIDE_TABLES.get(name) or ES.ORACLE_TABLES[os.path.basename(name)]
    V.conform(table, schema, os.path.join(where, name), first_row=first)
  return table


# ---------------------------------------------------------------------------- writing

class WriteParts(beam.DoFn):
  """One (split, write range): its samples sorted and written as parts of at most
  ``part_rows`` samples into the scratch folder; yields their descriptions."""

  def __init__(self, scratch: str, layout: stages.Layout, block_size: int, num_shards):
    self.scratch, self.layout = scratch, layout
    self.block_size, self.num_shards = block_size, num_shards

  def process(self, element):
    (split, w), tables = element
    table = stages.sort_part(C.concat([cols_of(t) for t in tables]))
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


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path)
             for n in names)


def load_json(path: str, missing):
  """The JSON file's content; ``missing`` when the pipeline wrote none (no element)."""
  if not os.path.exists(path):
    return missing
  with open(path) as f:
    return json.load(f)


def save_json(obj, path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, sort_keys=True)


# ---------------------------------------------------------------------------- finishing

def engine_stats(raw: dict) -> dict:
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
  parts, pieces = (load_json(os.path.join(scratch, n), []) for n in ("parts.json",
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
