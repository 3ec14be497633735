"""Growable numpy tables: the stream engine's state is a few of these.

``Columns`` holds named numpy arrays of one length that grow by appending (amortised: the
capacity doubles) and shrink by keeping a mask of rows. Every piece of engine state (the open
exposures, the recent crowd events, the history records) is one, so checkpointing the state is
pickling a few dicts of arrays.

``ragged_take`` / ``ragged_concat`` do the same for feature tables whose history sequences are
flat arrays cut by ``sv_offsets`` / ``lv_offsets`` (``mcjax.contract.schema``).
"""

from __future__ import annotations

import numpy as np

from mcjax.contract import schema as SS


class Columns:
  """Named arrays of one length; ``spec``: name -> (dtype, trailing shape, fill value)."""

  def __init__(self, spec: dict):
    self.spec = spec
    self.n = 0
    self._data = {name: np.full((16,) + tuple(shape), fill, dtype)
                  for name, (dtype, shape, fill) in spec.items()}

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, name: str) -> np.ndarray:
    """A view of the ``n`` rows of column ``name`` (writes go into the table)."""
    return self._data[name][:self.n]

  def append(self, **columns) -> np.ndarray:
    """Appends rows (columns not given get their fill value); returns their row numbers."""
    m = len(next(iter(columns.values())))
    need = self.n + m
    if need > len(next(iter(self._data.values()))):
      cap = max(need, 2 * len(next(iter(self._data.values()))))
      for name, (dtype, shape, fill) in self.spec.items():
        grown = np.full((cap,) + tuple(shape), fill, dtype)
        grown[:self.n] = self._data[name][:self.n]
        self._data[name] = grown
    for name, (dtype, shape, fill) in self.spec.items():
      self._data[name][self.n:need] = columns[name] if name in columns else fill
    rows = np.arange(self.n, need)
    self.n = need
    return rows

  def keep(self, mask: np.ndarray) -> np.ndarray:
    """Keeps the rows where ``mask`` is true (in order); returns old row -> new row (-1:
    dropped)."""
    mask = np.asarray(mask, bool)
    remap = np.full(self.n, -1, np.int64)
    kept = np.flatnonzero(mask)
    remap[kept] = np.arange(len(kept))
    for name in self._data:
      self._data[name] = self._data[name][:self.n][kept].copy()
    self.n = len(kept)
    return remap

  def __getstate__(self):
    return {"spec": self.spec, "n": self.n,
            "data": {k: v[:self.n].copy() for k, v in self._data.items()}}

  def __setstate__(self, state):
    self.spec, self.n, self._data = state["spec"], state["n"], state["data"]
    if self.n == 0:  # keep a capacity to grow from
      self._data = {name: np.full((16,) + tuple(shape), fill, dtype)
                    for name, (dtype, shape, fill) in self.spec.items()}


def _offset_fields(table: dict) -> dict:
  """prefix -> the sequence fields of that prefix present in ``table``."""
  return {p: [f for f in SS.DOMAINS[p] if f in table] for p in SS.OFFSETS if SS.OFFSETS[p] in table}


def ragged_take(table: dict, rows) -> dict:
  """Rows of a table with per-row fields and flat sequences cut by offsets (any order)."""
  rows = np.asarray(rows, np.int64)
  seq = _offset_fields(table)
  out = {}
  for p, fields in seq.items():
    off = np.asarray(table[SS.OFFSETS[p]], np.int64)
    starts, lens = off[rows], off[rows + 1] - off[rows]
    new_off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=new_off[1:])
    flat = np.repeat(starts - new_off[:-1], lens) + np.arange(new_off[-1])
    out[SS.OFFSETS[p]] = new_off
    for name in fields:
      out[name] = np.asarray(table[name])[flat]
  skip = {n for fields in seq.values() for n in fields} | set(SS.OFFSETS.values())
  for name, value in table.items():
    if name not in skip:
      out[name] = np.asarray(value)[rows]
  return out


def ragged_concat(tables: list[dict]) -> dict:
  """Tables of ``ragged_take``'s layout, one after the other."""
  first = tables[0]
  if len(tables) == 1:
    return first
  out = {}
  for name in first:
    if name in SS.OFFSETS.values():
      ends = np.cumsum([t[name][-1] for t in tables])
      out[name] = np.concatenate([[0]] + [np.asarray(t[name][1:]) + (ends[i - 1] if i else 0)
                                          for i, t in enumerate(tables)]).astype(np.int64)
    else:
      out[name] = np.concatenate([np.asarray(t[name]) for t in tables])
  return out
