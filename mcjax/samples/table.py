"""Sample tables in memory: checking, slicing, concatenating (see ``schema`` for the layout).

A *sample table* is materialised (sequence fields flat, cut by ``sv_offsets`` / ``lv_offsets``);
a *stored table* (``schema.STORED_FIELDS``) holds history references instead of sequences
(``history_store``). ``TableSource`` is the reader interface over an in-memory sample table.
"""

from __future__ import annotations

import numpy as np

from mcjax.contract import schema as S


def num_rows(table: dict) -> int:
  return len(table["sample_ts_ms"])


def _check_sorted(ts: np.ndarray, what: str) -> None:
  if np.any(np.diff(ts) < 0):
    raise ValueError(f"{what}: rows must be sorted by sample_ts_ms")


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
    want = (int(out[S.OFFSETS[f.name[:2]]][-1]),) if f.is_sequence else (n,) + f.shape
    if value.shape != want:
      raise ValueError(f"sample table: field {f.name!r} has shape {value.shape}, expected "
                       f"{want}")
    out[f.name] = value
  _check_sorted(out["sample_ts_ms"], "sample table")
  return out


def conform_stored(table: dict) -> dict:
  """Checks a stored table (``schema.STORED_FIELDS``); returns it with schema dtypes."""
  if "sample_ts_ms" not in table:
    raise ValueError("stored table: missing field 'sample_ts_ms'")
  n = len(table["sample_ts_ms"])
  out = {}
  for f in S.STORED_FIELDS:
    if f.name not in table:
      raise ValueError(f"stored table: missing field {f.name!r}")
    value = np.asarray(table[f.name], f.dtype)
    if value.shape != (n,) + f.shape:
      raise ValueError(f"stored table: field {f.name!r} has shape {value.shape}, expected "
                       f"{(n,) + f.shape}")
    out[f.name] = value
  for p in S.DOMAINS:
    if np.any(out[f"{p}_hist_n"] < 0) or np.any(out[f"{p}_hist_n"] > out[f"{p}_hist_end"]):
      raise ValueError(f"stored table: {p}_hist_n must lie in [0, {p}_hist_end]")
  _check_sorted(out["sample_ts_ms"], "stored table")
  return out


def table_slice(table: dict, start: int, stop: int) -> dict:
  """Rows [start, stop) of a sample table, as views (offsets rebased to 0)."""
  out = {}
  offsets = {p: np.asarray(table[o]) for p, o in S.OFFSETS.items()}
  for f in S.FIELDS:
    if f.is_sequence:
      off = offsets[f.name[:2]]
      out[f.name] = table[f.name][off[start]:off[stop]]
    else:
      out[f.name] = table[f.name][start:stop]
  for p, name in S.OFFSETS.items():
    off = offsets[p][start:stop + 1]
    out[name] = off - off[0]
  return out


def take_rows(table: dict, rows) -> dict:
  """Rows of a sample table (any order, repeats allowed) as a new sample table.

  A contiguous ascending run of rows is returned as views (no copy).
  """
  rows = np.asarray(rows, np.int64)
  if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
    return table_slice(table, int(rows[0]), int(rows[-1]) + 1)
  out = {}
  for p, name in S.OFFSETS.items():
    off = table[name]
    starts, lens = off[rows], off[rows + 1] - off[rows]
    new_off = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=new_off[1:])
    flat = np.repeat(starts - new_off[:-1], lens) + np.arange(new_off[-1])
    out[name] = new_off
    for seq in S.DOMAINS[p]:
      out[seq] = table[seq][flat]
  for f in S.FIELDS:
    if not f.is_sequence:
      out[f.name] = table[f.name][rows]
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
    shape = (int(lens[f.name[:2]].sum()),) if f.is_sequence else (n,) + f.shape
    if f.dtype.kind == "f":
      table[f.name] = rng.random(shape).astype(f.dtype)
    else:
      table[f.name] = rng.integers(0, 1 << 40 if f.dtype.itemsize == 8 else 1000,
                                   shape).astype(f.dtype)
  for p in S.DOMAINS:  # only the schema's action bits can be stored
    bits = sum(S.ACTION_BITS[p].values())
    table[f"{p}_action"] &= bits
  table["sample_ts_ms"] = start_ms + np.sort(rng.integers(0, 3_600_000, n))
  table["kind"] = rng.integers(0, len(S.KIND_NAMES), n).astype(np.int32)
  table["labels"] = (rng.random((n, len(S.TASKS))) < 0.2).astype(np.float32)
  return table


def one_sample(table: dict) -> dict:
  """The single row of a one-row sample table, as a dict of per-sample values."""
  return {f.name: table[f.name] if f.is_sequence else table[f.name][0] for f in S.FIELDS}


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
    return one_sample(self.__getitems__([i]))

  @property
  def sample_ts_ms(self) -> np.ndarray:
    return self.table["sample_ts_ms"]
