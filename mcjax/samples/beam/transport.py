"""How batches travel between the Beam stages (``mcjax.samples.beam.job``): inline
``Batch``es, or ``Spill`` run files in the scratch folder of which only names and row bounds
(``Slice``) go through the runner, the way a MapReduce shuffle moves data."""

from __future__ import annotations

import os
import pickle
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa

from mcjax.samples.beam import cols as C


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


def routed(spill: Spill, outputs, default_key=None):
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


def cols_of(v):
  """A travelled value's content: an inline ``Batch``'s, or a ``Spilled`` or ``Slice`` loaded."""
  return v.cols if isinstance(v, Batch) else v.load()


def values(grouped, name: str) -> list:
  return [cols_of(v) for v in grouped.get(name, ())]
