"""History stores: every user's history records of one domain, kept once, read by reference.

A sample's history snapshot (up to thousands of items) is not copied into the sample. A split
keeps one ``HistoryStore`` per domain ("sv", "lv"): the records sorted by (user, time), with

* the static sequence fields of the domain (``sv_item``, ``sv_ts_ms``, ``lv_author``, ...),
* ``action_ts`` [n, bits]: when each action bit of the record (``schema.ACTION_BITS``) became
  set (``NEVER``: not yet / never),
* timed values (``lv_watch_s``): the value and the time it becomes known (before it: 0),

and a sample holds ``{p}_hist_end``, ``{p}_hist_n``, ``{p}_hist_skip`` and ``query_ts_ms``
(``schema.REF_FIELDS``). ``materialize`` turns references into the flat sequence fields and
offsets of a sample table: records end - 1, end - 2, ... (most recent first), stepping over
``skip``, with action bits and watch times as of ``query_ts_ms`` (strictly before it). The
engine materialises in memory through the same function, so stored and in-memory samples agree.

On disk a store is a folder of ``.npy`` files (memory-mapped when read): ``<name>.npy`` per
column, ``action_ts.npy``, ``<field>.visible_ts.npy`` per timed value, and ``checksums.json``
(size and crc32 of each, ``eventlog.files``), checked by ``load`` before anything is mapped.
"""

from __future__ import annotations

import os

import numpy as np

from mcjax.eventlog import files
from mcjax.contract import schema as S

NEVER = np.iinfo(np.int64).max
ALWAYS = np.iinfo(np.int64).min
TIMED = {"lv": ("lv_watch_s",), "sv": ()}


def action_field(prefix: str) -> str:
  return f"{prefix}_action"


def static_fields(prefix: str) -> tuple[str, ...]:
  """The domain's sequence fields copied as stored (not derived from the query time)."""
  derived = (action_field(prefix),) + TIMED[prefix]
  return tuple(n for n in S.DOMAINS[prefix] if n not in derived)


class HistoryStore:
  """The history records of one domain; see the module docstring.

  Args:
    prefix: "sv" or "lv".
    columns: every ``static_fields(prefix)`` name -> (n,) array, in store order.
    action_ts: (n, len(ACTION_BITS[prefix])) int64, the time each bit was set.
    timed: every ``TIMED[prefix]`` name -> (value (n,), visible_ts (n,) int64).
  """

  def __init__(self, prefix: str, columns: dict, action_ts: np.ndarray, timed: dict):
    if prefix not in S.DOMAINS:
      raise ValueError(f"history store prefix must be one of {tuple(S.DOMAINS)}, got {prefix!r}")
    self.prefix = prefix
    self.columns = {n: np.asarray(columns[n]).astype(S.FIELD[n].dtype, copy=False)
                    for n in static_fields(prefix)}
    self.bits = np.array(list(S.ACTION_BITS[prefix].values()), np.int32)
    self.action_ts = np.asarray(action_ts, np.int64).reshape(-1, len(self.bits))
    self.timed = {n: (np.asarray(timed[n][0]).astype(S.FIELD[n].dtype, copy=False),
                      np.asarray(timed[n][1], np.int64)) for n in TIMED[prefix]}
    n = len(self)
    sizes = [len(v) for v in self.columns.values()] + [len(self.action_ts)] + [
        len(a) for pair in self.timed.values() for a in pair]
    if any(s != n for s in sizes):
      raise ValueError(f"{prefix} history store: columns of different lengths {sizes}")

  def __len__(self) -> int:
    return len(self.columns[static_fields(self.prefix)[0]])

  def materialize(self, end, n, skip, q) -> tuple[dict, np.ndarray]:
    """Flat sequence fields and offsets (len(end) + 1) of the referenced snapshots.

    Args:
      end, n, skip: (m,) ``{p}_hist_end``, ``{p}_hist_n``, ``{p}_hist_skip``.
      q: (m,) ``query_ts_ms``.
    """
    end, n, skip = (np.asarray(a, np.int64) for a in (end, n, skip))
    q = np.asarray(q, np.int64)
    offsets = np.zeros(len(n) + 1, np.int64)
    np.cumsum(n, out=offsets[1:])
    total = int(offsets[-1])
    query = np.repeat(np.arange(len(n)), n)
    idx = end[query] - 1 - (np.arange(total) - offsets[query])
    idx -= (idx <= skip[query]) & (skip[query] >= 0)
    if total and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f"{self.prefix} history reference out of range [0, {len(self)}): the "
                       "samples do not belong to this history store")
    out = {name: values[idx] for name, values in self.columns.items()}
    qq = q[query]
    times = self.action_ts[idx]
    bits = np.zeros(total, np.int32)
    for j, bit in enumerate(self.bits):
      bits |= np.where(times[:, j] < qq, bit, 0).astype(np.int32)
    out[action_field(self.prefix)] = bits
    for name, (value, visible) in self.timed.items():
      out[name] = np.where(visible[idx] < qq, value[idx], 0).astype(value.dtype)
    return out, offsets

  # -------------------------------------------------------------------------- files

  def save(self, folder: str) -> None:
    """Writes the store's files, then their checksum manifest."""
    os.makedirs(folder, exist_ok=True)
    for name, values in self.columns.items():
      np.save(os.path.join(folder, f"{name}.npy"), values)
    np.save(os.path.join(folder, "action_ts.npy"), self.action_ts)
    for name, (value, visible) in self.timed.items():
      np.save(os.path.join(folder, f"{name}.npy"), value)
      np.save(os.path.join(folder, f"{name}.visible_ts.npy"), visible)
    files.write_manifest(folder)

  @classmethod
  def load(cls, folder: str, prefix: str, *, verify: bool = True) -> "HistoryStore":
    """Opens a saved store (memory-mapped); names the missing or corrupt file if any.

    ``verify``: check the files against ``checksums.json`` first (``CorruptFileError``).
    """
    if verify:
      files.verify_manifest(folder, f"{prefix} history store")

    def arr(name):
      path = os.path.join(folder, f"{name}.npy")
      try:
        return np.load(path, mmap_mode="r")
      except (OSError, ValueError) as e:
        raise ValueError(f"cannot read history store file {path}: {e}") from e
    return cls(prefix, {n: arr(n) for n in static_fields(prefix)}, arr("action_ts"),
               {n: (arr(n), arr(f"{n}.visible_ts")) for n in TIMED[prefix]})

  # -------------------------------------------------------------------------- from tables

  @classmethod
  def from_sequences(cls, table: dict, prefix: str, base: int = 0):
    """A store holding a materialised sample table's ``prefix`` sequences, and the references.

    Each sample's sequence becomes its own run of records (oldest first), with its action bits
    set since ``ALWAYS`` and its timed values always known, so ``materialize`` of the returned
    references gives the table's sequences back exactly. ``base`` is added to the references
    (the store is appended after ``base`` existing records).

    Returns (store, refs) with refs the ``{p}_hist_*`` fields.
    """
    off = np.asarray(table[S.OFFSETS[prefix]], np.int64)
    n = np.diff(off)
    total = int(off[-1])
    sample = np.repeat(np.arange(len(n)), n)
    # store row r of sample i holds its sequence item (off[i+1] - 1 - (r - off[i])): reversed
    rev = off[1:][sample] - 1 - (np.arange(total) - off[:-1][sample])
    columns = {name: np.asarray(table[name])[rev] for name in static_fields(prefix)}
    action = np.asarray(table[action_field(prefix)], np.int64)[rev]
    bits = np.array(list(S.ACTION_BITS[prefix].values()), np.int64)
    unknown = action & ~np.bitwise_or.reduce(bits)
    if np.any(unknown):
      raise ValueError(f"sample table: field {action_field(prefix)!r} has bits "
                       f"{int(np.bitwise_or.reduce(unknown))} outside the schema's "
                       f"{S.ACTION_BITS[prefix]}")
    action_ts = np.where((action[:, None] & bits[None, :]) != 0, ALWAYS, NEVER)
    timed = {name: (np.asarray(table[name])[rev], np.full(total, ALWAYS, np.int64))
             for name in TIMED[prefix]}
    refs = {f"{prefix}_hist_end": base + off[1:], f"{prefix}_hist_n": n,
            f"{prefix}_hist_skip": np.full(len(n), -1, np.int64)}
    return cls(prefix, columns, action_ts, timed), refs


def concat(stores: list[HistoryStore]) -> HistoryStore:
  """Stores of one domain, one after the other."""
  first = stores[0]
  return HistoryStore(
      first.prefix,
      {n: np.concatenate([s.columns[n] for s in stores]) for n in first.columns},
      np.concatenate([s.action_ts for s in stores]),
      {n: tuple(np.concatenate([s.timed[n][i] for s in stores]) for i in (0, 1))
       for n in first.timed})


def store_table(table: dict, base: dict | None = None) -> tuple[dict, dict]:
  """A materialised sample table -> (stored table, {"sv": store, "lv": store}).

  ``base``: records already in each domain's store (the new records are appended after them).
  """
  base = base or {}
  stored = {f.name: table[f.name] for f in S.STORED_FIELDS if f.name in table}
  stores = {}
  for prefix in S.DOMAINS:
    stores[prefix], refs = HistoryStore.from_sequences(table, prefix, base.get(prefix, 0))
    stored.update(refs)
  # the table's action bits and watch times are known since ALWAYS, before any query time
  return stored, stores


def materialize_table(stored: dict, stores: dict) -> dict:
  """A stored table (non-sequence fields + references) -> a materialised sample table."""
  out = {f.name: stored[f.name] for f in S.FIELDS if not f.is_sequence}
  for prefix, store in stores.items():
    seq, offsets = store.materialize(stored[f"{prefix}_hist_end"], stored[f"{prefix}_hist_n"],
                                     stored[f"{prefix}_hist_skip"], stored["query_ts_ms"])
    out.update(seq)
    out[S.OFFSETS[prefix]] = offsets
  return out


def _arrays(store: HistoryStore) -> dict:
  """File name -> array of a store, as ``save`` writes them."""
  out = {f"{n}.npy": v for n, v in store.columns.items()}
  out["action_ts.npy"] = store.action_ts
  for n, (value, visible) in store.timed.items():
    out[f"{n}.npy"], out[f"{n}.visible_ts.npy"] = value, visible
  return out


def empty(prefix: str) -> HistoryStore:
  """A store of one domain without records."""
  return HistoryStore(
      prefix, {n: np.zeros(0, S.FIELD[n].dtype) for n in static_fields(prefix)},
      np.zeros((0, len(S.ACTION_BITS[prefix])), np.int64),
      {n: (np.zeros(0, S.FIELD[n].dtype), np.zeros(0, np.int64)) for n in TIMED[prefix]})


def concat_saved(folders: list[str], out: str, prefix: str) -> int:
  """Concatenates saved stores of one domain (``HistoryStore.save`` folders, in order) into
  the store folder ``out``, file by file through memory-mapped output (memory stays bounded by
  the page cache, whatever the stores' size); returns the number of records."""
  stores = [_arrays(HistoryStore.load(f, prefix, verify=False)) for f in folders]
  template = _arrays(empty(prefix))
  total = sum(len(s["action_ts.npy"]) for s in stores)
  os.makedirs(out, exist_ok=True)
  for name, like in template.items():
    path = os.path.join(out, name)
    shape = (total,) + tuple(like.shape[1:])
    if total == 0:
      np.save(path, np.zeros(shape, like.dtype))
      continue
    dest = np.lib.format.open_memmap(path, mode="w+", dtype=like.dtype, shape=shape)
    at = 0
    for store in stores:
      piece = store[name]
      dest[at:at + len(piece)] = piece
      at += len(piece)
    dest.flush()
    del dest
  files.write_manifest(out)
  return total
