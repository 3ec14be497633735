"""Building Moment samples from an event log into a samples folder, and the sample cache.

``build_samples_dir(log_dir, out_dir, cfg)`` runs the engine chunk by chunk (bounded memory)
and writes ``out_dir/train/`` and ``out_dir/eval/`` (see ``shards``) plus ``build_info.json``,
atomically. ``ensure_samples(log_dir, cache_root, cfg)`` builds into
``cache_root/<mode>-<hash>/`` only when that folder is missing; the hash covers the config,
the sample schema version and the log's events.parquet size and mtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from mcjax.eventlog import schema as E
from mcjax.samples import schema as S
from mcjax.samples import shards

SPLITS = ("train", "eval")
BUILD_INFO = "build_info.json"


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  return str(value)


CHUNK_ROWS = 256 * 1024  # samples per written part (a multiple of the block size)


def build_samples_dir(log_dir: str, out_dir: str, moment_cfg, *, overwrite: bool = False,
                      num_shards: int | None = None) -> dict:
  """Runs the engine and writes all splits into out_dir atomically; returns build info."""
  from mcjax import moment  # the engine, imported only when samples are built
  moment_cfg.validate()
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
  start = time.perf_counter()
  builder = moment.engine.SampleBuilder(log_dir, moment_cfg)
  prep_s = time.perf_counter() - start
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
  try:
    start = time.perf_counter()
    meta = {"moment": dataclasses.asdict(moment_cfg), "log": os.path.abspath(log_dir)}
    counts = {}
    for split in SPLITS:  # chunk by chunk: memory stays bounded by CHUNK_ROWS samples
      chunks = tqdm(builder.tables(split, chunk_rows=CHUNK_ROWS, stored=True), unit="chunk",
                    total=max(1, -(-builder.num_rows(split) // CHUNK_ROWS)),
                    desc=f"samples {moment_cfg.mode} {split}", leave=False)
      path = shards.write_samples(chunks, tmp, split, history=builder.history,
                                  num_shards=num_shards, metadata=meta)
      counts[split] = shards.read_info(path)["kind_counts"]
    total_s = time.perf_counter() - start + prep_s
    info = {"schema_version": S.SCHEMA_VERSION, "log": meta["log"], "moment": meta["moment"],
            "counts": counts, "stats": builder.stats, "engine_prepare_s": prep_s,
            "build_and_write_s": total_s}
    with open(os.path.join(tmp, BUILD_INFO), "w") as f:
      json.dump(info, f, indent=1, sort_keys=True, default=_jsonable)
    _move_into_place(tmp, out_dir, overwrite)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return info


def _move_into_place(tmp: str, out_dir: str, overwrite: bool) -> None:
  if os.path.exists(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir} appeared while building")
    old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(out_dir))
    os.rename(out_dir, os.path.join(old, "x"))
    os.rename(tmp, out_dir)
    shutil.rmtree(old)
  else:
    os.rename(tmp, out_dir)


def cache_key(log_dir: str, moment_cfg) -> str:
  """'<mode>-<hash>' of the config, the schema version and the log's events file."""
  stat = os.stat(os.path.join(log_dir, E.EVENTS_FILE))
  blob = json.dumps({"moment": dataclasses.asdict(moment_cfg), "schema": S.SCHEMA_VERSION,
                     "events": [stat.st_size, stat.st_mtime_ns]}, sort_keys=True)
  return f"{moment_cfg.mode}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def ensure_samples(log_dir: str, cache_root: str, moment_cfg) -> str:
  """The samples folder for (log, config) under cache_root, built only when missing.

  Safe when several processes call it at once: a builder that loses the race keeps the
  folder already in place.
  """
  path = os.path.join(os.path.abspath(cache_root), cache_key(log_dir, moment_cfg))
  if os.path.exists(os.path.join(path, BUILD_INFO)):
    return path
  try:
    build_samples_dir(log_dir, path, moment_cfg)
  except (FileExistsError, OSError):
    if not os.path.exists(os.path.join(path, BUILD_INFO)):
      raise
  return path


def format_report(info: dict) -> str:
  """Counts per split and kind, and throughput, as a small table."""
  kinds = [S.KIND_NAMES[k] for k in sorted(S.KIND_NAMES)]
  rows = [[split] + [info["counts"][split][k] for k in kinds]
          + [sum(info["counts"][split].values())] for split in SPLITS]
  total = sum(r[-1] for r in rows)
  lines = [tabulate(rows, headers=["split"] + kinds + ["total"]),
           f"engine labels: {info['engine_prepare_s']:.1f} s; features + shards: "
           f"{info['build_and_write_s'] - info['engine_prepare_s']:.1f} s; total "
           f"{info['build_and_write_s']:.1f} s "
           f"({total / max(info['build_and_write_s'], 1e-9):,.0f} samples/s)"]
  return "\n".join(lines)
