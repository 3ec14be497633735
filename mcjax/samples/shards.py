"""Sample shards: write a sample table as ArrayRecord shards, and read them back at random.

A split lives in ``<out_dir>/<split>/``: a complete TFDS dataset directory (``tfds_builder``;
one record = one block of consecutive samples), plus ``samples_info.json`` (schema version,
sample counts per kind, block size, the Moment config used) and ``sample_ts_ms.npy`` (every
sample's time, for selecting time windows without touching the shards).

    write_samples(table, "samples", "train", metadata={"moment": asdict(cfg)})
    src = open_samples("samples", "train")
    len(src); batch_table = src.__getitems__(range(0, 512)); ts = sample_ts_ms(src)

``__getitems__`` returns a *sample table* (columnar, see ``schema``) of the rows asked for, in
that order; ``TableSource`` gives the same interface over an in-memory table.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import threading

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from mcjax.samples import schema as S
from mcjax.samples import tfds_builder as B

INFO_FILE = "samples_info.json"
TS_FILE = "sample_ts_ms.npy"
DEFAULT_BLOCK_SIZE = 256


# ---------------------------------------------------------------------------- sample tables

def conform_table(table: dict) -> dict:
  """Checks a sample table against the schema; returns it with schema dtypes.

  Raises ValueError naming the field for a missing field, a wrong shape, bad offsets or rows
  out of time order.
  """
  if "sample_ts_ms" not in table:
    raise ValueError("sample table: missing field 'sample_ts_ms'")
  n = len(table["sample_ts_ms"])
  out = {}
  for p, name in S.OFFSETS.items():
    if name not in table:
      raise ValueError(f"sample table: missing field {name!r}")
    off = np.asarray(table[name], np.int64)
    if off.shape != (n + 1,) or off[0] != 0 or np.any(np.diff(off) < 0):
      raise ValueError(f"sample table: {name} must be non-decreasing, start at 0 and have "
                       f"length n + 1 = {n + 1} (got shape {off.shape})")
    out[name] = off
  for f in S.FIELDS:
    if f.name not in table:
      raise ValueError(f"sample table: missing field {f.name!r}")
    value = np.asarray(table[f.name], f.dtype)
    want = (int(out[S.OFFSETS[B.seq_prefix(f.name)]][-1]),) if f.is_sequence else (n,) + f.shape
    if value.shape != want:
      raise ValueError(f"sample table: field {f.name!r} has shape {value.shape}, expected "
                       f"{want}")
    out[f.name] = value
  if np.any(np.diff(out["sample_ts_ms"]) < 0):
    raise ValueError("sample table: rows must be sorted by sample_ts_ms")
  return out


def num_rows(table: dict) -> int:
  return len(table["sample_ts_ms"])


def take_rows(table: dict, rows) -> dict:
  """Rows of a sample table (any order, repeats allowed) as a new sample table.

  A contiguous ascending run of rows is returned as views (no copy).
  """
  rows = np.asarray(rows, np.int64)
  if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
    return B.table_block(table, int(rows[0]), int(rows[-1]) + 1)
  out = {}
  for p, name in S.OFFSETS.items():
    off = table[name]
    starts, lens = off[rows], off[rows + 1] - off[rows]
    new_off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=new_off[1:])
    flat = np.repeat(starts - new_off[:-1], lens) + np.arange(new_off[-1])
    out[name] = new_off
    for seq in (S.SV_FIELDS if p == "sv" else S.LV_FIELDS):
      out[seq] = table[seq][flat]
  for f in S.FIELDS:
    if not f.is_sequence:
      out[f.name] = table[f.name][rows]
  return out


def concat_tables(tables: list[dict]) -> dict:
  """Concatenates sample tables row-wise."""
  if len(tables) == 1:
    return tables[0]
  out = {f.name: np.concatenate([t[f.name] for t in tables]) for f in S.FIELDS}
  for name in S.OFFSETS.values():
    ends = np.cumsum([t[name][-1] for t in tables])
    parts = [t[name][1:] + base for t, base in zip(tables, np.concatenate([[0], ends[:-1]]))]
    out[name] = np.concatenate([np.zeros(1, np.int64)] + parts)
  return out


def kind_counts(table: dict) -> dict[str, int]:
  """Number of samples per kind name."""
  kinds = np.bincount(table["kind"], minlength=len(S.KIND_NAMES))
  return {S.KIND_NAMES[k]: int(kinds[k]) for k in sorted(S.KIND_NAMES)}


def random_sample_table(n: int, *, max_sv: int = 12, max_lv: int = 5, seed: int = 0,
                        start_ms: int = 1_700_000_000_000) -> dict:
  """A random, schema-valid sample table of n rows with ragged histories (tests, benchmarks).

  History lengths are uniform in [0, max_sv] / [0, max_lv]; times are sorted.
  """
  rng = np.random.default_rng(seed)
  table = {}
  lens = {"sv": rng.integers(0, max_sv + 1, n), "lv": rng.integers(0, max_lv + 1, n)}
  for p, name in S.OFFSETS.items():
    table[name] = np.concatenate([[0], np.cumsum(lens[p])]).astype(np.int64)
  for f in S.FIELDS:
    shape = (int(lens[B.seq_prefix(f.name)].sum()),) if f.is_sequence else (n,) + f.shape
    if f.dtype.kind == "f":
      table[f.name] = rng.random(shape).astype(f.dtype)
    else:
      table[f.name] = rng.integers(0, 1 << 40 if f.dtype.itemsize == 8 else 1000,
                                   shape).astype(f.dtype)
  table["sample_ts_ms"] = start_ms + np.sort(rng.integers(0, 3_600_000, n))
  table["kind"] = rng.integers(0, len(S.KIND_NAMES), n).astype(np.int32)
  table["labels"] = (rng.random((n, len(S.TASKS))) < 0.2).astype(np.float32)
  return table


class TableSource:
  """The source interface (``len``, ``__getitems__`` -> sample table) over an in-memory table."""

  block_size = 1

  def __init__(self, table: dict):
    self.table = conform_table(table)

  def __len__(self) -> int:
    return num_rows(self.table)

  def __getitems__(self, indices) -> dict:
    return take_rows(self.table, indices)

  def __getitem__(self, i: int) -> dict:
    return _one_sample(self.__getitems__([i]))

  @property
  def sample_ts_ms(self) -> np.ndarray:
    return self.table["sample_ts_ms"]


def _one_sample(table: dict) -> dict:
  return {f.name: table[f.name] if f.is_sequence else table[f.name][0] for f in S.FIELDS}


# ---------------------------------------------------------------------------- writing

def write_samples(table, out_dir: str, split: str, *, num_shards: int | None = None,
                  block_size: int = DEFAULT_BLOCK_SIZE, metadata: dict | None = None,
                  overwrite: bool = False) -> str:
  """Writes a sample table as ``<out_dir>/<split>/``, atomically; returns that path.

  Args:
    table: a sample table (see ``schema``), rows sorted by time, or an iterable of such
      tables (consecutive chunks, e.g. ``SampleBuilder.tables(split, chunk_rows=...)``). Each
      chunk becomes one part (its own TFDS dataset folder ``part-NNNNN``), so memory stays
      bounded by a chunk whatever the split's size.
    out_dir: the samples folder (created if missing).
    split: the split name, e.g. "train" or "eval".
    num_shards: ArrayRecord files per part (None: TFDS picks from the size).
    block_size: samples per record.
    metadata: JSON-able extras kept in samples_info.json (e.g. {"moment": config dict}).
    overwrite: replace an existing split (only after the new one is fully written).
  """
  if not split.isidentifier():
    raise ValueError(f"split={split!r}: expected a name like 'train' or 'eval'")
  if block_size < 1:
    raise ValueError(f"block_size={block_size}: expected >= 1")
  chunks = [table] if isinstance(table, dict) else table
  target = os.path.join(os.path.abspath(out_dir), split)
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=os.path.dirname(target))
  try:
    tfds.disable_progress_bar()
    built = os.path.join(tmp, "split")
    os.makedirs(built)
    parts, ts, counts, last_ts = [], [], collections.Counter(), None
    for chunk in chunks:
      chunk = conform_table(chunk)
      n = num_rows(chunk)
      if n == 0:
        continue
      if last_ts is not None and chunk["sample_ts_ms"][0] < last_ts:
        raise ValueError(f"write_samples: chunk {len(parts)} of split {split!r} starts before "
                         "the previous one ends (sample_ts_ms must be sorted)")
      last_ts = chunk["sample_ts_ms"][-1]
      name = f"part-{len(parts):05d}"
      builder = B.SampleShardBuilder(table=chunk, split=split, block_size=block_size,
                                     data_dir=os.path.join(tmp, name), file_format="array_record")
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(num_shards=num_shards))
      os.rename(str(builder.data_path), os.path.join(built, name))
      shutil.rmtree(os.path.join(tmp, name))
      parts.append({"dir": name, "num_samples": n})
      ts.append(chunk["sample_ts_ms"])
      counts.update(kind_counts(chunk))
    if not parts:
      raise ValueError(f"write_samples: split {split!r} has no samples")
    ts = np.concatenate(ts)
    info = {"schema_version": S.SCHEMA_VERSION, "split": split,
            "num_samples": int(sum(p["num_samples"] for p in parts)), "parts": parts,
            "block_size": block_size, "kind_counts": dict(counts),
            "sample_ts_ms_range": [int(ts[0]), int(ts[-1])], "metadata": metadata or {}}
    with open(os.path.join(built, INFO_FILE), "w") as f:
      json.dump(info, f, indent=1, sort_keys=True)
    np.save(os.path.join(built, TS_FILE), ts)
    if os.path.exists(target):
      old = tempfile.mkdtemp(prefix=f".old-{split}-", dir=os.path.dirname(target))
      os.rename(target, os.path.join(old, split))
      os.rename(built, target)
      shutil.rmtree(old)
    else:
      os.rename(built, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


# ---------------------------------------------------------------------------- reading

def read_info(split_dir: str) -> dict:
  """samples_info.json of a split folder; refuses another schema version."""
  path = os.path.join(split_dir, INFO_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {split_dir} is not a sample split written "
                            "by write_samples")
  with open(path) as f:
    info = json.load(f)
  if info.get("schema_version") != S.SCHEMA_VERSION:
    raise ValueError(f"{split_dir} holds samples of schema version "
                     f"{info.get('schema_version')!r}, but this code reads "
                     f"{S.SCHEMA_VERSION!r}: rebuild the samples")
  return info


class ShardSource:
  """Random access to one split's samples: ``len``, ``__getitems__`` -> sample table.

  Decoded blocks are kept in a small LRU cache (``cache_blocks``), so consecutive batches that
  share a block decode it once. Safe to use from several threads; picklable (re-opens the
  shards by path in Grain worker processes).
  """

  def __init__(self, split_dir: str, *, cache_blocks: int = 16):
    self.split_dir = os.path.abspath(split_dir)
    self.cache_blocks = cache_blocks
    self.info = read_info(self.split_dir)
    self.block_size = int(self.info["block_size"])
    self._num = int(self.info["num_samples"])
    self._open()

  def _open(self):
    self._data, self._files, self._file_ends = [], [], []
    for part in self.info["parts"]:
      part_dir = os.path.join(self.split_dir, part["dir"])
      try:
        builder = tfds.builder_from_directory(part_dir)
        split_info = builder.info.splits[self.info["split"]]
        files = [str(p) for p in split_info.filepaths]
        lengths = list(split_info.shard_lengths)
      except Exception as e:
        raise ValueError(f"cannot open sample shards in {part_dir}: {e}") from e
      self._check_files(files, lengths)
      self._files.append(files)
      self._file_ends.append(np.cumsum(lengths))
      self._data.append(builder.as_data_source(split=self.info["split"]))
    sizes = np.array([p["num_samples"] for p in self.info["parts"]], np.int64)
    self._part_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def _check_files(self, files, lengths):
    for path, length in zip(files, lengths):
      try:
        reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
        got = reader.num_records()
        reader.close()
      except Exception as e:
        raise ValueError(f"corrupt or truncated sample shard {path}: "
                         f"{type(e).__name__} {e}") from e
      if got != length:
        raise ValueError(f"corrupt or truncated sample shard {path}: {got} records, "
                         f"dataset info says {length}")

  def __getstate__(self):
    return {"split_dir": self.split_dir, "cache_blocks": self.cache_blocks}

  def __setstate__(self, state):
    self.__init__(state["split_dir"], cache_blocks=state["cache_blocks"])

  def __len__(self) -> int:
    return self._num

  @property
  def sample_ts_ms(self) -> np.ndarray:
    path = os.path.join(self.split_dir, TS_FILE)
    if os.path.exists(path):
      return np.load(path)
    ts = np.concatenate([self._blocks([(p, b)])[0]["sample_ts_ms"]
                         for p, data in enumerate(self._data) for b in range(len(data))])
    try:
      np.save(path, ts)
    except OSError:
      pass  # a read-only folder: recompute next time
    return ts

  def _blocks(self, block_ids) -> list[dict]:
    """Decoded records of (part, block) keys, through the LRU cache."""
    with self._lock:
      found = {b: self._cache[b] for b in block_ids if b in self._cache}
      for b in found:
        self._cache.move_to_end(b)
    by_part = collections.defaultdict(list)
    for p, b in (k for k in block_ids if k not in found):
      by_part[p].append(b)
    for p, blocks in by_part.items():
      try:
        records = self._data[p].__getitems__(blocks)
      except Exception as e:
        files = sorted({self._files[p][int(np.searchsorted(self._file_ends[p], b, "right"))]
                        for b in blocks})
        raise ValueError(f"cannot read sample shard(s) {files}: {e}") from e
      with self._lock:
        for b, rec in zip(blocks, records):
          found[(p, b)] = rec
          self._cache[(p, b)] = rec
        while len(self._cache) > self.cache_blocks:
          self._cache.popitem(last=False)
    return [found[b] for b in block_ids]

  def __getitems__(self, indices) -> dict:
    idx = np.asarray(indices, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= self._num):
      raise IndexError(f"sample index out of range [0, {self._num}) in {self.split_dir}")
    part = np.searchsorted(self._part_starts, idx, side="right") - 1
    local = idx - self._part_starts[part]
    block_of = local // self.block_size
    key = (part << 40) + block_of
    ids, inverse = np.unique(key, return_inverse=True)
    blocks = self._blocks([(int(k >> 40), int(k & ((1 << 40) - 1))) for k in ids])
    sizes = np.array([len(b["sample_ts_ms"]) for b in blocks], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = starts[inverse] + local - block_of * self.block_size
    return take_rows(concat_tables(blocks), rows)

  def __getitem__(self, i: int) -> dict:
    return _one_sample(self.__getitems__([i]))


def open_samples(samples_dir: str, split: str, **kwargs) -> ShardSource:
  """Opens ``<samples_dir>/<split>/`` for random access (see ``ShardSource``)."""
  path = os.path.join(samples_dir, split)
  if not os.path.isdir(path):
    have = sorted(d for d in os.listdir(samples_dir)
                  if os.path.isdir(os.path.join(samples_dir, d)) and not d.startswith(".")
                  ) if os.path.isdir(samples_dir) else []
    raise FileNotFoundError(f"no split {split!r} in {samples_dir} (found {have})")
  return ShardSource(path, **kwargs)


def sample_ts_ms(source) -> np.ndarray:
  """Every sample's time (int64, time-ordered) of a ShardSource or TableSource."""
  return source.sample_ts_ms
