"""Sample shards: write sample tables as ArrayRecord shards, and read them back at random.

A split lives in ``<out_dir>/<split>/``: TFDS dataset directories ``part-NNNNN``
(``tfds_builder``; one record = one block of consecutive stored samples, histories by
reference), the split's history stores ``history/sv/`` and ``history/lv/``
(``history_store``), ``samples_info.json`` (schema version, sample counts per kind, block size,
the Moment config used), ``sample_ts_ms.npy`` (every sample's time, for selecting time
windows without touching the shards) and ``checksums.json`` (size and crc32 of every file of
the split but the history stores, which carry their own: ``eventlog.files``). Opening a split
checks them all (about 0.1 s per 100 MB) and names the first corrupt file; a copy of a
``ShardSource`` unpickled in a worker process does not check again.

    write_samples(table, "samples", "train", metadata={"moment": asdict(cfg)})
    src = open_samples("samples", "train")
    len(src); batch_table = src.__getitems__(range(0, 512)); ts = sample_ts_ms(src)

``__getitems__`` returns a materialised *sample table* (columnar, see ``schema``) of the rows
asked for, in that order; ``table.TableSource`` gives the same interface over an in-memory
table.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import threading

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from mcjax.eventlog import files
from mcjax.contract import history_store as H
from mcjax.contract import schema as S
from mcjax.samples import tfds_builder as B
from mcjax.samples.table import (conform_stored, conform_table, kind_counts, num_rows,
                                 one_sample)

INFO_FILE = "samples_info.json"
TS_FILE = "sample_ts_ms.npy"
HISTORY_DIR = "history"
DEFAULT_BLOCK_SIZE = 256


# ---------------------------------------------------------------------------- writing

def write_samples(table, out_dir: str, split: str, *, history: dict | None = None,
                  num_shards: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                  metadata: dict | None = None, overwrite: bool = False) -> str:
  """Writes sample tables as ``<out_dir>/<split>/``, atomically; returns that path.

  Args:
    table: a sample table (see ``schema``), rows sorted by time, or an iterable of such
      tables (consecutive chunks). Each chunk becomes one part (its own TFDS dataset folder
      ``part-NNNNN``), so the records in memory stay bounded by a chunk.
      With ``history``, the chunks are *stored* tables instead (``schema.STORED_FIELDS``,
      e.g. ``SampleBuilder.tables(split, chunk_rows=..., stored=True)``) whose references
      point into ``history``; without it, each chunk's sequences are appended to the split's
      history stores here.
    out_dir: the samples folder (created if missing).
    split: the split name, e.g. "train" or "eval".
    history: {"sv": HistoryStore, "lv": HistoryStore} the stored chunks point into.
    num_shards: ArrayRecord files per part (None: TFDS picks from the size).
    block_size: samples per record.
    metadata: JSON-able extras kept in samples_info.json (e.g. {"moment": config dict}).
    overwrite: replace an existing split (only after the new one is fully written).
  """
  if not split.isidentifier():
    raise ValueError(f"split={split!r}: expected a name like 'train' or 'eval'")
  if block_size < 1:
    raise ValueError(f"block_size={block_size}: expected >= 1")
  if history is not None and set(history) != set(S.DOMAINS):
    raise ValueError(f"history: expected stores for {sorted(S.DOMAINS)}, got {sorted(history)}")
  chunks = [table] if isinstance(table, dict) else table
  target = os.path.join(os.path.abspath(out_dir), split)
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
  with files.staging(target) as tmp:
    built = os.path.join(tmp, "split")
    os.makedirs(built)
    parts, ts, counts, last_ts = [], [], collections.Counter(), None
    pieces = {p: [] for p in S.DOMAINS}  # history records appended from materialised chunks
    for chunk in chunks:
      if history is None:
        chunk = conform_table(chunk)
        chunk, stores = H.store_table(chunk, {p: sum(map(len, pieces[p])) for p in pieces})
        for p, store in stores.items():
          pieces[p].append(store)
      else:
        chunk = conform_stored(chunk)
      n = num_rows(chunk)
      if n == 0:
        continue
      if last_ts is not None and chunk["sample_ts_ms"][0] < last_ts:
        raise ValueError(f"write_samples: chunk {len(parts)} of split {split!r} starts before "
                         "the previous one ends (sample_ts_ms must be sorted)")
      last_ts = chunk["sample_ts_ms"][-1]
      name = f"part-{len(parts):05d}"
      write_part(chunk, os.path.join(built, name), split, block_size=block_size,
                 num_shards=num_shards)
      parts.append({"dir": name, "num_samples": n})
      ts.append(chunk["sample_ts_ms"])
      counts.update(kind_counts(chunk))
    if not parts:
      raise ValueError(f"write_samples: split {split!r} has no samples")
    stores = history or {p: H.concat(pieces[p]) for p in S.DOMAINS}
    for p, store in stores.items():
      store.save(os.path.join(built, HISTORY_DIR, p))
    finish_split(built, split, parts, np.concatenate(ts), counts,
                 {p: len(store) for p, store in stores.items()}, block_size, metadata)
    files.replace_dir(built, target, overwrite)
  return target


def write_part(stored: dict, folder: str, split: str, *, block_size: int = DEFAULT_BLOCK_SIZE,
               num_shards: int | None = None) -> None:
  """Writes one part: a *stored* table (``conform_stored``, sorted, non-empty) as the TFDS
  ArrayRecord dataset folder ``folder`` (which must not exist; built in a sibling first)."""
  tfds.disable_progress_bar()
  tmp = f"{folder}.building"
  shutil.rmtree(tmp, ignore_errors=True)
  builder = B.SampleShardBuilder(table=stored, split=split, block_size=block_size,
                                 data_dir=tmp, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  os.rename(str(builder.data_path), folder)
  shutil.rmtree(tmp)


def finish_split(built: str, split: str, parts: list, ts: np.ndarray, counts,
                 history_records: dict, block_size: int, metadata: dict | None) -> None:
  """Writes a split folder's ``samples_info.json``, ``sample_ts_ms.npy`` and checksums, once
  its parts (``[{"dir", "num_samples"}]`` in time order) and history stores are in ``built``."""
  info = {"schema_version": S.SCHEMA_VERSION, "split": split,
          "num_samples": int(sum(p["num_samples"] for p in parts)), "parts": parts,
          "block_size": block_size, "kind_counts": dict(counts),
          "history_records": dict(history_records),
          "sample_ts_ms_range": [int(ts[0]), int(ts[-1])], "metadata": metadata or {}}
  with open(os.path.join(built, INFO_FILE), "w") as f:
    json.dump(info, f, indent=1, sort_keys=True)
  np.save(os.path.join(built, TS_FILE), ts)
  files.write_manifest(built, skip=(HISTORY_DIR,))


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

  def __init__(self, split_dir: str, *, cache_blocks: int = 16, verify: bool = True):
    self.split_dir = os.path.abspath(split_dir)
    self.cache_blocks = cache_blocks
    self.info = read_info(self.split_dir)  # another schema version: named before checksums
    if verify:  # checksums of every file, before a shard or history is opened
      files.verify_manifest(self.split_dir, "sample split")
    self._verify = verify
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
    self.history = {p: H.HistoryStore.load(os.path.join(self.split_dir, HISTORY_DIR, p), p,
                                           verify=self._verify) for p in S.DOMAINS}
    for p, store in self.history.items():
      want = self.info.get("history_records", {}).get(p)
      if want is not None and len(store) != want:
        raise ValueError(f"history store {os.path.join(self.split_dir, HISTORY_DIR, p)} has "
                         f"{len(store)} records, samples_info.json says {want}")
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

  def __setstate__(self, state):  # checked when this source was opened: not again per worker
    self.__init__(state["split_dir"], cache_blocks=state["cache_blocks"], verify=False)

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
        self._raise_unreadable(p, blocks, e)
      with self._lock:
        for b, rec in zip(blocks, records):
          found[(p, b)] = rec
          self._cache[(p, b)] = rec
        while len(self._cache) > self.cache_blocks:
          self._cache.popitem(last=False)
    return [found[b] for b in block_ids]

  def _raise_unreadable(self, part: int, blocks: list, error: Exception):
    """Names the shard file and record index of the first block that fails to parse."""
    for b in blocks:
      f = int(np.searchsorted(self._file_ends[part], b, "right"))
      record = b - (int(self._file_ends[part][f - 1]) if f else 0)
      try:
        self._data[part].__getitems__([b])
      except Exception as e:  # this block's record is the bad one
        raise ValueError(f"corrupt sample shard {self._files[part][f]}: record {record} "
                         f"(samples {b * self.block_size}-{(b + 1) * self.block_size - 1} "
                         f"of {self.info['parts'][part]['dir']}) cannot be parsed: "
                         f"{type(e).__name__} {e}") from e
    raise ValueError(f"cannot read sample shards of {self.split_dir}: {error}") from error

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
    stored = {f.name: np.concatenate([b[f.name] for b in blocks])[rows] for f in S.STORED_FIELDS}
    return H.materialize_table(stored, self.history)

  def __getitem__(self, i: int) -> dict:
    return one_sample(self.__getitems__([i]))


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
