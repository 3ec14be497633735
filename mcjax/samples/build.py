"""Building Moment samples from an event log into a samples folder, and the sample cache.

``build_samples_dir(log_dir, out_dir, cfg)`` runs the engine chunk by chunk (bounded memory)
and writes ``out_dir/train/`` and ``out_dir/eval/`` (see ``shards``) plus ``build_info.json``,
atomically. ``ensure_samples(log_dir, cache_root, cfg)`` builds into
``cache_root/<mode>-<hash>/`` only when that folder is missing; the hash covers the config,
the sample schema version and the size and mtime of every file of the log's tables (events,
side tables, oracle; a table may be a folder of parts).

Before anything is written: the output may not overlap the log (``files.check_apart``), an
existing output is replaced only with ``overwrite`` and only if it is a samples folder, and
the log is validated (``eventlog.validate``; ``validate=False`` keeps only the check of its
columns and types) from one read of its tables, which the engine then reuses. Writing happens in a locked staging folder (stale ones
of killed runs are removed); an ``OSError`` while writing (a full disk) is re-raised as one
naming the output folder, which is left as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from mcjax.eventlog import files
from mcjax.eventlog import io as log_io
from mcjax.contract import schema as S
from mcjax.eventlog import validate as V
from mcjax.moment import engine as engine_lib
from mcjax.samples import shards

SPLITS = ("train", "eval")
BUILD_INFO = "build_info.json"
MARKS = (BUILD_INFO, *SPLITS)  # what an existing samples folder holds


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  return str(value)


CHUNK_ROWS = 256 * 1024  # samples per written part (a multiple of the block size)


ENGINES = ("local", "beam")


def build_samples_dir(log_dir: str, out_dir: str, moment_cfg, *, overwrite: bool = False,
                      num_shards: int | None = None, validate: bool = True,
                      engine: str = "local", beam_args=None, beam_layout=None) -> dict:
  """Runs the engine and writes all splits into out_dir atomically; returns build info.

  Refuses (before writing anything) an ``out_dir`` overlapping ``log_dir``, an existing one
  without ``overwrite`` or that is not a samples folder, and, with ``validate``, a log that
  breaks its contract (``LogValidationError``; warnings go to stderr and build_info.json).

  ``engine``: "local" (``moment.engine``, the whole log in this process) or "beam"
  (``samples.beam``: the same samples from a Beam pipeline; ``beam_args`` are Beam's own flags,
  e.g. ["--runner=DirectRunner", "--direct_num_workers=2"]; ``beam_layout`` a
  ``samples.beam.stages.Layout``). Both validate at the same door and write the same folder.
  """
  if engine not in ENGINES:
    raise ValueError(f"engine={engine!r}: expected one of {ENGINES}")
  if engine == "beam":
    return _build_beam(log_dir, out_dir, moment_cfg, overwrite=overwrite,
                       num_shards=num_shards, validate=validate, beam_args=beam_args,
                       layout=beam_layout)
  out_dir = _check_out(log_dir, out_dir, moment_cfg, overwrite)
  start = time.perf_counter()
  log, warnings = _read_log(log_dir, validate)
  validate_s = time.perf_counter() - start
  builder = engine_lib.SampleBuilder(log, moment_cfg)
  prep_s = time.perf_counter() - start - validate_s
  with _writing(out_dir), files.staging(out_dir) as tmp:
    info = _write(builder, tmp, log_dir, moment_cfg, num_shards, prep_s + validate_s)
    info.update(engine_prepare_s=prep_s, validate_s=validate_s, log_warnings=warnings)
    _publish(tmp, out_dir, info, overwrite)
  return info


_WRITE_FAILURES = ("write() failed", "No space left", "File too large", "quota")


def _check_out(log_dir: str, out_dir: str, moment_cfg, overwrite: bool) -> str:
  """The refusals made before anything is read or written; returns out_dir made absolute."""
  moment_cfg.validate()
  out_dir = os.path.abspath(out_dir)
  files.check_apart({"--events": log_dir}, {"--out": out_dir})
  if os.path.lexists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
  files.check_replaceable(out_dir, "--out", MARKS, "a samples folder")
  return out_dir


def _build_beam(log_dir: str, out_dir: str, moment_cfg, *, overwrite: bool, num_shards,
                validate: bool, beam_args, layout) -> dict:
  """``build_samples_dir`` with the Beam engine. The door is the same: with ``validate`` the
  log is validated here first (this process reads it once, as ``launch.validate`` does);
  without, the pipeline checks each table's columns, types and nulls as it reads them. The
  pipeline writes into the staging folder; a failed run leaves ``out_dir`` as it was."""
  from mcjax.samples.beam import job  # Beam, imported only when asked for
  out_dir = _check_out(log_dir, out_dir, moment_cfg, overwrite)
  job.pipeline_options(beam_args)  # refuse unknown flags before any work
  start = time.perf_counter()
  warnings = []
  if validate:
    tables, warnings = _read_log(log_dir, True)
    del tables
  validate_s = time.perf_counter() - start
  meta = {"moment": dataclasses.asdict(moment_cfg), "log": os.path.abspath(log_dir)}
  with _writing(out_dir), files.staging(out_dir) as tmp:
    got = job.run(log_dir, tmp, moment_cfg, pipeline_args=beam_args, layout=layout,
                  num_shards=num_shards, check_types=not validate, metadata=meta)
    total_s = time.perf_counter() - start
    info = {"schema_version": S.SCHEMA_VERSION, "log": meta["log"], "moment": meta["moment"],
            "counts": got["counts"], "stats": got["stats"], "engine": "beam",
            "beam_args": list(beam_args or []),
            "beam_layout": got["layout"], "beam_spill_bytes": got["spill_bytes"],
            "beam_largest_key": got["largest_key"],
            "engine_prepare_s": got["pipeline_s"], "validate_s": validate_s,
            "build_and_write_s": total_s, "log_warnings": warnings}
    _publish(tmp, out_dir, info, overwrite)
  return info


@contextlib.contextmanager
def _writing(out_dir: str):
  """Failed writes (disk full, permissions, the ArrayRecord writer's errors) as one OSError
  naming ``out_dir``; an existing ``out_dir`` stays a FileExistsError."""
  try:
    yield
  except FileExistsError:
    raise
  except OSError as e:
    raise OSError(f"cannot write samples to {out_dir}: {e.strerror or e}"
                  + (f" ({e.filename})" if e.filename else "")) from e
  except RuntimeError as e:  # the ArrayRecord writer reports a failed write() this way
    if not any(w in str(e) for w in _WRITE_FAILURES):
      raise
    raise OSError(f"cannot write samples to {out_dir}: {' '.join(str(e).split())}") from e


def _publish(tmp: str, out_dir: str, info: dict, overwrite: bool) -> None:
  """Writes build_info.json into the staged folder and moves it to ``out_dir``."""
  with open(os.path.join(tmp, BUILD_INFO), "w") as f:
    json.dump(info, f, indent=1, sort_keys=True, default=_jsonable)
  files.replace_dir(tmp, out_dir, overwrite)


def _read_log(log_dir: str, validate: bool):
  """(the log's tables, read once for the engine; validation warnings). Without ``validate``
  only the tables' columns and types are checked (``validate.check_types``)."""
  from mcjax.moment.events import LogTables
  events, side, oracle = V.read_log(log_dir)
  where = os.path.basename(os.path.normpath(log_dir))
  warnings = []
  if validate:
    warnings = V.validate_tables(events, side, oracle, where=where).warnings
  else:
    V.check_types(events, side, oracle, where=where)
  for w in warnings:
    print(f"WARNING: {w}", file=sys.stderr)
  tables = LogTables(events=events, users=side["users.parquet"],
                     authors=side["authors.parquet"], lives=side["lives.parquet"],
                     videos=side["videos.parquet"],
                     oracle_exposures=oracle.get("exposures.parquet"))
  return tables, warnings


def _write(builder, tmp: str, log_dir: str, moment_cfg, num_shards, prep_s: float) -> dict:
  """Writes the splits into ``tmp``; returns the build info (``prep_s``: the time so far)."""
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
  return {"schema_version": S.SCHEMA_VERSION, "log": meta["log"], "moment": meta["moment"],
          "counts": counts, "stats": builder.stats, "engine_prepare_s": prep_s,
          "build_and_write_s": total_s}


def cache_key(log_dir: str, moment_cfg) -> str:
  """'<mode>-<hash>' of the config, the schema version and every file of the log's tables
  (relative path, size, mtime): a changed side table, or a part added to a folder of parts,
  gives another key."""
  tables = [[os.path.relpath(p, log_dir), os.stat(p).st_size, os.stat(p).st_mtime_ns]
            for p in log_io.log_table_files(log_dir)]
  blob = json.dumps({"moment": dataclasses.asdict(moment_cfg), "schema": S.SCHEMA_VERSION,
                     "tables": tables}, sort_keys=True)
  return f"{moment_cfg.mode}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def ensure_samples(log_dir: str, cache_root: str, moment_cfg, *, validate: bool = True) -> str:
  """The samples folder for (log, config) under cache_root, built only when missing (the log
  is then validated first unless ``validate=False``).

  Safe when several processes call it at once: a builder that loses the race keeps the
  folder already in place.
  """
  path = os.path.join(os.path.abspath(cache_root), cache_key(log_dir, moment_cfg))
  files.check_apart({"the log": log_dir}, {"the sample cache": path})
  if os.path.exists(os.path.join(path, BUILD_INFO)):
    return path
  try:
    build_samples_dir(log_dir, path, moment_cfg, validate=validate)
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
  total_s, engine_s = info["build_and_write_s"], info["engine_prepare_s"]
  read_s = info.get("validate_s", 0.0)  # with --novalidate: the engine's own read
  if info.get("engine") == "beam":
    steps = (f"Beam pipeline (labels, features, parts): {engine_s:.1f} s; "
             f"assembling the splits: {total_s - engine_s - read_s:.1f} s")
  else:
    steps = (f"engine labels: {engine_s:.1f} s; "
             f"features + shards: {total_s - engine_s - read_s:.1f} s")
  lines = [tabulate(rows, headers=["split"] + kinds + ["total"]),
           f"log read + validation: {read_s:.1f} s; {steps}; total {total_s:.1f} s "
           f"({total / max(total_s, 1e-9):,.0f} samples/s)"]
  if info.get("beam_largest_key"):
    lines.append("largest key (rows one worker held at once): " + ", ".join(
        f"{k} {v:,}" for k, v in info["beam_largest_key"].items()))
    lines.append(f"Beam layout: {info['beam_layout']['buckets']} buckets; batches spilled to "
                 f"the scratch folder: {info['beam_spill_bytes'] / 2**20:,.0f} MiB")
  return "\n".join(lines)
