"""Reading foreign source files (CSV or Parquet) and turning their columns into log values.

Every reader checks that the file and the columns it needs exist and raises ``SourceError``
naming the file and column otherwise. Column converters are vectorised and deterministic:
string ids that are plain decimal numbers become that number, other strings a 64-bit FNV-1a
hash masked non-negative; category names become crc32 hashes masked to int31 (0 = unknown).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

MISSING = -1  # id / time of a null or unparsable cell; rows holding it are dropped


class SourceError(ValueError):
  """A source file is missing, unreadable, or lacks a needed column."""


def _resolve(src: str, name: str) -> str:
  """The path of ``name`` in ``src``, accepting the other of .csv / .parquet too."""
  stem, ext = os.path.splitext(name)
  for cand in (name, stem + (".parquet" if ext == ".csv" else ".csv")):
    if os.path.isfile(os.path.join(src, cand)):
      return os.path.join(src, cand)
  raise SourceError(f"{name}: missing file (looked in {src})")


def read_source(src: str, name: str, columns: list[str]) -> pa.Table:
  """Reads the needed ``columns`` of source file ``name`` (CSV or Parquet) in folder ``src``."""
  path = _resolve(src, name)
  shown = os.path.basename(path)
  try:
    if path.endswith(".parquet"):
      names = pq.read_schema(path).names
    else:
      names = pacsv.open_csv(path).schema.names
  except (pa.ArrowException, OSError) as e:
    raise SourceError(f"{shown}: unreadable file ({e})") from e
  missing = [c for c in columns if c not in names]
  if missing:
    raise SourceError(f"{shown}: missing column(s) {', '.join(repr(c) for c in missing)} "
                      f"(has {names})")
  try:
    if path.endswith(".parquet"):
      return pq.read_table(path, columns=columns)
    strings = {c: pa.string() for c in columns if "category" in c or "name" in c}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        include_columns=columns, column_types=strings))
  except (pa.ArrowException, OSError) as e:
    raise SourceError(f"{shown}: unreadable file ({e})") from e


def plain(col) -> pa.Array:
  """One contiguous, non-dictionary array from an Array or ChunkedArray."""
  if isinstance(col, pa.ChunkedArray):
    col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
  if pa.types.is_dictionary(col.type):
    col = col.cast(col.type.value_type)
  return col


def fnv64(strings) -> np.ndarray:
  """64-bit FNV-1a of each string's UTF-8 bytes, masked to a non-negative int64."""
  arr = plain(strings).cast(pa.large_binary())
  arr = pa.concat_arrays([arr])  # drops any slice offset
  n = len(arr)
  h = np.full(n, 0xCBF29CE484222325, np.uint64)
  if n:
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    prime = np.uint64(0x100000001B3)
    for k in range(int(lengths.max(initial=0))):
      on = lengths > k
      h[on] = (h[on] ^ data[starts[on] + k].astype(np.uint64)) * prime
  return (h & np.uint64(0x7FFFFFFFFFFFFFFF)).astype(np.int64)


def ids(col) -> np.ndarray:
  """Foreign ids -> int64 (MISSING where null)."""
  col = plain(col)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    return pc.fill_null(pc.cast(col, pa.int64(), safe=False), MISSING).to_numpy()
  col = col.cast(pa.string())
  digits = pc.fill_null(pc.match_substring_regex(col, r"^[0-9]{1,18}$"), False)
  as_int = pc.cast(pc.if_else(digits, col, "0"), pa.int64()).to_numpy()
  out = np.where(digits.to_numpy(zero_copy_only=False), as_int, fnv64(pc.fill_null(col, "")))
  out[pc.is_null(col).to_numpy(zero_copy_only=False)] = MISSING
  return out


def times_ms(col) -> np.ndarray:
  """Timestamps (ms numbers, numeric strings, Arrow timestamps) -> int64 ms (MISSING if null)."""
  col = plain(col)
  if pa.types.is_timestamp(col.type):
    col = col.cast(pa.timestamp("ms", col.type.tz)).cast(pa.int64())
  return ids(col)


def numbers(col, fill: float = 0.0) -> np.ndarray:
  """Numbers, or strings holding them (ranges like "100-500" give their first number)."""
  col = plain(col)
  if pa.types.is_boolean(col.type):
    col = col.cast(pa.int8())
  if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
    first = pc.extract_regex(col.cast(pa.string()), r"(?P<n>[0-9]+(?:\.[0-9]+)?)")
    col = pc.cast(pc.struct_field(first, [0]), pa.float64())
  return pc.fill_null(pc.cast(col, pa.float64()), fill).to_numpy(zero_copy_only=False)


def flags(col) -> np.ndarray:
  """Booleans from bools, numbers (!= 0) or strings ("1", "true", "yes", ...)."""
  col = plain(col)
  if pa.types.is_boolean(col.type):
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    return numbers(col) != 0
  low = pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string())))
  hit = pc.is_in(low, value_set=pa.array(["1", "true", "t", "yes", "y"]))
  return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)


def name_hash(col) -> np.ndarray:
  """Category names -> crc32 & 0x7fffffff as int32 (0 for null or empty)."""
  enc = plain(col).cast(pa.string()).dictionary_encode()
  words = enc.dictionary.to_pylist()  # one entry per distinct name, not per row
  table = np.array([zlib.crc32(w.encode()) & 0x7FFFFFFF if w else 0 for w in words] + [0],
                   np.int64)
  idx = pc.fill_null(enc.indices, len(words)).to_numpy(zero_copy_only=False)
  return table[idx].astype(np.int32)


def log2_bucket(x: np.ndarray) -> np.ndarray:
  """floor(log2(1 + max(x, 0))) as int32: 0 for 0, 1 for 1, 2 for 2..3, ..."""
  x = np.maximum(np.nan_to_num(np.asarray(x, np.float64)), 0)
  return np.floor(np.log2(1 + x)).astype(np.int32)


_AGE_EDGES = np.array([18, 24, 31, 41, 50])


def age_codes(col) -> np.ndarray:
  """Ages or age ranges ("18-23", "50+") -> 1 (<18) .. 6 (50+), 0 when unknown."""
  v = numbers(col, fill=np.nan)
  code = 1 + np.searchsorted(_AGE_EDGES, np.nan_to_num(v, nan=0), side="right")
  return np.where(np.isnan(v), 0, code).astype(np.int32)


def gender_codes(col) -> np.ndarray:
  """"M"/"male" -> 1, "F"/"female" -> 2, integer codes kept (>= 0), anything else 0."""
  col = plain(col)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    return np.maximum(numbers(col), 0).astype(np.int32)
  first = pc.utf8_slice_codeunits(pc.utf8_lower(col.cast(pa.string())), 0, 1)
  idx = pc.index_in(first, value_set=pa.array(["m", "f"]))
  return pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int32)
