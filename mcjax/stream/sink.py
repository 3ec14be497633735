"""The stream engine's output: a samples folder that grows, with exactly-once checkpoints.

``SampleSink(out_dir)`` takes the engine's sample tables as they leave it and writes them as
parts of the folder format ``mcjax.samples.build`` writes (``mcjax.samples.shards``): each
part is a stored table (``history_store.store_table``: its histories become its own run of
history records) written as a TFDS ArrayRecord dataset, beside its history records and
sample times, under ``out_dir/.stream/parts/<split>/``. ``checkpoint(state)`` rolls the
pending samples into parts, then writes ``.stream/checkpoint.pkl`` (the engine state, the
source position, the parts written and the dead-letter file's size) under a temporary name
and renames it: parts and offsets are published in one atomic step. ``publish()`` assembles
``out_dir/train`` and ``out_dir/eval`` from the committed parts (the history pieces
concatenated, ``shards.finish_split``), so the trainer reads the folder as any other.

On a restart ``SampleSink.resume`` loads the last checkpoint and deletes every part it does
not list (written after it, by a killed run): the engine then re-emits exactly those
samples, none lost and none twice.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil

import numpy as np

from mcjax.contract import history_store as H
from mcjax.contract import schema as SS
from mcjax.eventlog import files
from mcjax.samples import shards
from mcjax.samples.table import conform_table, kind_counts
from mcjax.stream.columns import ragged_concat

SPLITS = ("train", "eval")
STATE_DIR = ".stream"
CHECKPOINT = "checkpoint.pkl"
DEAD_LETTERS = "dead_letters.jsonl"


class SampleSink:
  """See the module docstring. ``part_rows``: the most samples a part holds."""

  def __init__(self, out_dir: str, *, part_rows: int = 256 * 1024,
               metadata: dict | None = None):
    self.out_dir = os.path.abspath(out_dir)
    self.root = os.path.join(self.out_dir, STATE_DIR)
    self.part_rows = part_rows
    self.metadata = metadata or {}
    self.parts = {s: [] for s in SPLITS}   # committed + written: {"dir", "num_samples", ...}
    self.pending = {s: [] for s in SPLITS}
    self.pending_rows = {s: 0 for s in SPLITS}
    for split in SPLITS:
      os.makedirs(self._split_dir(split), exist_ok=True)

  @property
  def dead_letter_path(self) -> str:
    return os.path.join(self.root, DEAD_LETTERS)

  def _split_dir(self, split: str) -> str:
    return os.path.join(self.root, "parts", split)

  # ------------------------------------------------------------------ writing

  def add(self, split: str, table: dict | None) -> None:
    """Samples of ``split`` that left the engine (sorted, after those added before)."""
    if table is None or not len(table["sample_ts_ms"]):
      return
    self.pending[split].append(table)
    self.pending_rows[split] += len(table["sample_ts_ms"])
    if self.pending_rows[split] >= self.part_rows:
      self._roll(split)

  def _roll(self, split: str) -> None:
    if not self.pending[split]:
      return
    table = conform_table(ragged_concat(self.pending[split]))
    self.pending[split], self.pending_rows[split] = [], 0
    parts = self.parts[split]
    base = {p: sum(part["records"][p] for part in parts) for p in SS.DOMAINS}
    stored, stores = H.store_table(table, base)
    name = f"part-{len(parts):05d}"
    folder = self._split_dir(split)
    for p, store in stores.items():
      shutil.rmtree(os.path.join(folder, f"{name}.history", p), ignore_errors=True)
      store.save(os.path.join(folder, f"{name}.history", p))
    np.save(os.path.join(folder, f"{name}.ts.npy"), table["sample_ts_ms"])
    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    shards.write_part(stored, os.path.join(folder, name), split)
    parts.append({"dir": name, "num_samples": len(table["sample_ts_ms"]),
                  "records": {p: len(s) for p, s in stores.items()},
                  "counts": kind_counts(table)})

  def checkpoint(self, state: dict) -> None:
    """Rolls every pending sample into parts, then publishes them with ``state`` (the engine,
    the source position, ...) in one atomic rename."""
    for split in SPLITS:
      self._roll(split)
    blob = pickle.dumps({"state": state, "parts": self.parts}, protocol=pickle.HIGHEST_PROTOCOL)
    files.atomic_write(os.path.join(self.root, CHECKPOINT), blob)

  @classmethod
  def resume(cls, out_dir: str, **kwargs) -> tuple["SampleSink", dict | None]:
    """(a sink continuing the folder's last checkpoint, its state or None). Parts written
    after that checkpoint are deleted."""
    sink = cls(out_dir, **kwargs)
    path = os.path.join(sink.root, CHECKPOINT)
    if not os.path.exists(path):
      return sink, None
    with open(path, "rb") as f:
      saved = pickle.load(f)
    sink.parts = saved["parts"]
    for split in SPLITS:
      folder = sink._split_dir(split)
      keep = {p["dir"] for p in sink.parts[split]}
      for name in os.listdir(folder):
        if name.split(".")[0] not in keep:
          target = os.path.join(folder, name)
          shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    return sink, saved["state"]

  # ------------------------------------------------------------------ the folder

  def publish(self) -> dict:
    """Writes ``out_dir/<split>/`` for every split with committed parts (replacing the last
    published one); returns the sample counts per split and kind."""
    counts = {}
    for split in SPLITS:
      parts = self.parts[split]
      if not parts:
        continue
      folder = self._split_dir(split)
      target = os.path.join(self.out_dir, split)
      with files.staging(target) as tmp:
        built = os.path.join(tmp, "split")
        os.makedirs(built)
        for part in parts:
          shutil.copytree(os.path.join(folder, part["dir"]), os.path.join(built, part["dir"]),
                          copy_function=os.link)
        records = {}
        for p in SS.DOMAINS:
          records[p] = H.concat_saved(
              [os.path.join(folder, f"{part['dir']}.history", p) for part in parts],
              os.path.join(built, shards.HISTORY_DIR, p), p)
        ts = np.concatenate([np.load(os.path.join(folder, f"{part['dir']}.ts.npy"))
                             for part in parts])
        total = collections.Counter()
        for part in parts:
          total.update(part["counts"])
        shards.finish_split(built, split, [{"dir": p["dir"], "num_samples": p["num_samples"]}
                                           for p in parts], ts, total, records,
                            shards.DEFAULT_BLOCK_SIZE, self.metadata)
        files.replace_dir(built, target, overwrite=True)
      counts[split] = dict(total)
    return counts
