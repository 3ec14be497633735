"""Column batches: what travels between the Beam engine's stages, and how keys are made.

A *batch* is a dict of equal-length numpy arrays (a column table). The engine never sends one
element per event: every element is a batch of the rows that share a key, so the runner's
per-element cost is paid per (input batch, key), and the stages run the vectorised engine code
once per key group.

Keys are small tuples of Python ints (deterministic coders). ``bucket`` spreads ids over a
fixed number of buckets with the splitmix64 finaliser, so dense or strided ids (0, 1, 2, ...)
still spread evenly; ``range_bucket`` keeps ids in order (bucket b holds ids below those of
bucket b + 1), which the history stores need to be laid out exactly as the in-process engine
lays them out (see ``pipeline``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix(ids: np.ndarray, salt: int = 0) -> np.ndarray:
  """splitmix64 finaliser of int64 ids (uint64)."""
  z = np.asarray(ids, np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15 * (salt + 1)
                                                            % 2 ** 64)
  z = (z ^ (z >> np.uint64(30))) * _M1
  z = (z ^ (z >> np.uint64(27))) * _M2
  return z ^ (z >> np.uint64(31))


def bucket(ids: np.ndarray, n: int, salt: int = 0) -> np.ndarray:
  """Hash bucket 0..n-1 of each id (int64)."""
  return (mix(ids, salt) % np.uint64(n)).astype(np.int64)


def range_bucket(ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
  """Bucket of each id among sorted ``bounds``: ids below bounds[0] in 0, and so on (int64)."""
  return np.searchsorted(np.asarray(bounds, np.int64), np.asarray(ids, np.int64),
                         side="right").astype(np.int64)


def length(cols: dict) -> int:
  return len(next(iter(cols.values()))) if cols else 0


def take(cols: dict, idx) -> dict:
  return {k: v[idx] for k, v in cols.items()}


def concat(parts: Iterable[dict], like: dict | None = None) -> dict:
  """Batches with the same columns, one after the other (``like``: the columns of an empty
  result)."""
  parts = [p for p in parts if p is not None]
  if not parts:
    return {k: v[:0] for k, v in (like or {}).items()}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def split(cols: dict, *keys: np.ndarray) -> Iterator[tuple[tuple, dict]]:
  """(key tuple of Python ints, rows) for each distinct combination of ``keys`` columns."""
  n = length(cols)
  if n == 0:
    return
  stacked = np.stack([np.asarray(k, np.int64) for k in keys])
  order = np.lexsort(stacked[::-1])
  s = stacked[:, order]
  new = np.ones(n, bool)
  new[1:] = (s[:, 1:] != s[:, :-1]).any(axis=0)
  starts = np.flatnonzero(new)
  ends = np.append(starts[1:], n)
  rows = take(cols, order)  # one gather; each key's rows are a slice of it
  for a, b in zip(starts, ends):
    yield tuple(int(v) for v in s[:, a]), take(rows, slice(a, b))


def pair_index(a_id: np.ndarray, a_t: np.ndarray, b_id: np.ndarray,
               b_t: np.ndarray) -> np.ndarray:
  """Row of each (a_id, a_t) pair among the (b_id, b_t) pairs (the last of equal ones), -1
  where absent."""
  n = len(a_id)
  _, id_code = np.unique(np.concatenate([a_id, b_id]), return_inverse=True)
  t_values, t_code = np.unique(np.concatenate([a_t, b_t]), return_inverse=True)
  key = id_code.reshape(-1).astype(np.int64) * len(t_values) + t_code.reshape(-1)
  ka, kb = key[:n], key[n:]
  if not len(kb):
    return np.full(n, -1, np.int64)
  order = np.argsort(kb, kind="stable")
  sorted_b = kb[order]
  pos = np.searchsorted(sorted_b, ka, side="right") - 1
  hit = (pos >= 0) & (sorted_b[np.maximum(pos, 0)] == ka)
  return np.where(hit, order[np.maximum(pos, 0)], -1).astype(np.int64)
