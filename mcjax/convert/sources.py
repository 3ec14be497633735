"""Reading foreign source files (CSV or Parquet) and turning their columns into log values.

Every reader checks that the file and the columns it needs exist and raises ``SourceError``
naming the file and column otherwise; a value that cannot be read raises ``SourceError``
naming the file, the column, the row (``line N`` of a CSV, header = line 1, blank lines not
counted; ``row N`` of a Parquet file, from 0) and the value. Nothing is guessed silently:

* **ids** (``ids``): an id is its decimal text. Decimal strings (surrounding spaces, leading
  zeros and a ``.0`` fraction ignored) and integers in [0, 2^63) keep their value; anything
  else, including decimals from 2^63 up (uint64 ids above the int64 range, and numbers beyond
  uint64 such as ``99999999999999999999``) and negative numbers, is hashed as its (canonical
  decimal) text with 64-bit FNV-1a masked non-negative, so the log keeps ids >= 0. (A
  two's-complement reinterpretation of uint64 ids would make them negative, which the log
  forbids.) CSV id columns are read as text, so a long id never turns the column into floats.
  Float id columns (Parquet) must hold whole numbers below 2^53 (beyond it a float has already
  merged neighbouring ids); NaN or a fraction is an error. ``\\N`` is an error (a Hive/MySQL
  null marker: write an empty cell). After hashing, two different ids mapping to one value is
  an error, so ids are never merged.
* **times** (``mcjax.convert.times.parse_times``): integers (or decimal strings) are epoch
  times whose unit, s, ms, us or ns, is told by the magnitude of the column's median (< 1e11
  s, < 1e14 ms, < 1e17 us, else ns) and reported; a value of another magnitude than the rest
  of its column (mixed units, a 0 placeholder) or negative is an error. ISO 8601 strings need
  a zone (``Z``, ``+08:00``); local ones (``2025-05-01 10:00``) are an error unless the
  converter was given the zone of its local times (``--tz=Asia/Shanghai``), as are Parquet
  timestamps without a zone. Anything else (``\\N``, ``yesterday``) is an error. Nulls (empty
  cells) are returned as MISSING for the converter to drop and count.

Category names become crc32 hashes masked to int31 (0 = unknown).
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

MISSING = -1  # id / time of a null cell; the converter drops (and counts) rows holding it
_META_FILE, _META_CSV = b"mcjax.source_file", b"mcjax.source_csv"


class SourceError(ValueError):
  """A source file is missing or unreadable, lacks a needed column, or holds a bad value."""


@dataclasses.dataclass(frozen=True)
class Where:
  """A source column, for messages: its file, its name, and how its rows are counted."""
  file: str = "?"
  column: str = "?"
  csv: bool = False

  def row(self, i: int) -> str:
    return f"line {int(i) + 2}" if self.csv else f"row {int(i)}"

  def fail(self, problem: str, i: int | None = None, value=None):
    at = f", {self.row(i)}: {_shown(value)}" if i is not None else ""
    raise SourceError(f"{self.file}: column '{self.column}'{at}: {problem}")


def _shown(value) -> str:
  """A cell for a message: printable text as '...' (a backslash as is), else its repr."""
  if isinstance(value, str) and value.isprintable() and "'" not in value:
    return f"'{value}'"
  return repr(value)


def where(table: pa.Table, column: str) -> Where:
  """The Where of a column of a table returned by ``read_source`` (rows as in the file)."""
  meta = table.schema.metadata or {}
  return Where(meta.get(_META_FILE, b"?").decode(), column, meta.get(_META_CSV) == b"1")


def _resolve(src: str, name: str) -> str:
  """The path of ``name`` in ``src``, accepting the other of .csv / .parquet too."""
  stem, ext = os.path.splitext(name)
  for cand in (name, stem + (".parquet" if ext == ".csv" else ".csv")):
    if os.path.isfile(os.path.join(src, cand)):
      return os.path.join(src, cand)
  raise SourceError(f"{name}: missing file (looked in {src})")


def read_source(src: str, name: str, columns: list[str], text=()) -> pa.Table:
  """Reads the needed ``columns`` of source file ``name`` (CSV or Parquet) in folder ``src``.

  ``text``: columns of a CSV read as text whatever they look like (ids and times: parsed by
  ``ids`` / ``parse_times``, never inferred as floats). Empty cells are nulls. The table
  remembers its file for ``where``; row i of it is row i of the file.
  """
  path = _resolve(src, name)
  shown = os.path.basename(path)
  csv = not path.endswith(".parquet")
  try:
    if csv:
      names = pacsv.open_csv(path).schema.names
    else:
      names = pq.read_schema(path).names
  except (pa.ArrowException, OSError) as e:
    raise SourceError(f"{shown}: unreadable file ({one_line(e)})") from e
  missing = [c for c in columns if c not in names]
  if missing:
    raise SourceError(f"{shown}: missing column(s) {', '.join(repr(c) for c in missing)} "
                      f"(has {names})")
  try:
    if csv:
      raw = {c: pa.binary() for c in columns
             if c in text or "category" in c or "name" in c}
      table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
          include_columns=columns, column_types=raw, strings_can_be_null=True))
      table = _utf8(table, Where(shown, "?", True))
    else:
      table = pq.read_table(path, columns=columns)
  except (pa.ArrowException, OSError) as e:
    raise SourceError(f"{shown}: unreadable file ({one_line(e)})") from e
  return table.replace_schema_metadata({_META_FILE: shown.encode(),
                                        _META_CSV: b"1" if csv else b"0"})


def one_line(e: Exception) -> str:
  return " ".join(str(e).split())


def _utf8(table: pa.Table, at: Where) -> pa.Table:
  """Binary CSV columns (read raw, or inferred so because of bad bytes) -> UTF-8 strings;
  names the first row whose bytes are not UTF-8."""
  for i, field in enumerate(table.schema):
    if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
      continue
    col = plain(table.column(i))
    try:
      text = col.cast(pa.string())
    except pa.ArrowInvalid:
      for row, value in enumerate(col.to_pylist()):
        try:
          value is None or value.decode("utf-8")
        except UnicodeDecodeError:
          dataclasses.replace(at, column=field.name).fail(
              "bytes that are not UTF-8 (re-encode the file as UTF-8)", row, value[:40])
      raise
    table = table.set_column(i, pa.field(field.name, pa.string()), text)
  return table


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


# ---------------------------------------------------------------------------- ids

_INT64_LIMIT = 1 << 63
_FLOAT_EXACT = 1 << 53
_NULL_MARKERS = ("\\N",)


def not_null(col: pa.Array) -> np.ndarray:
  return pc.is_valid(col).to_numpy(zero_copy_only=False)


def _bools(arr) -> np.ndarray:
  return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def ids(col, at: Where | None = None) -> np.ndarray:
  """Foreign ids -> int64 >= 0 (MISSING where null); see the module docstring."""
  at = at or Where()
  col = plain(col)
  out = np.full(len(col), MISSING, np.int64)
  if pa.types.is_null(col.type) or len(col) == 0:
    return out
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    hashed, texts = _number_ids(col, out, at)
  elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
    hashed, texts = _text_ids(col, out, at)
  elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
    hashed = np.flatnonzero(not_null(col))
    texts = col.filter(pc.is_valid(col))
  else:
    at.fail(f"type {col.type} cannot hold ids")
  _hash_into(out, hashed, texts, at)
  return out


def _number_ids(col: pa.Array, out, at: Where):
  """Integer or float ids: [0, 2^63) kept; returns (rows to hash, their decimal texts)."""
  valid = not_null(col)
  rows = np.flatnonzero(valid)
  v = col.filter(pc.is_valid(col)).to_numpy(zero_copy_only=False)
  if v.dtype.kind == "f":
    bad = ~np.isfinite(v) | (v != np.round(v)) | (np.abs(v) >= _FLOAT_EXACT)
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      at.fail("not an id: a float id must be a whole number below 2^53 (above it floats "
              "merge neighbouring ids; store ids as integers or text)", rows[i], float(v[i]))
    v = v.astype(np.int64)
  keep = v < np.uint64(_INT64_LIMIT) if v.dtype == np.uint64 else v >= 0
  out[rows[keep]] = v[keep].astype(np.int64)
  return rows[~keep], pa.array(v[~keep]).cast(pa.string())


def _text_ids(col: pa.Array, out, at: Where):
  """String ids: canonical decimals below 2^63 kept; returns (rows to hash, their texts)."""
  text = pc.utf8_trim_whitespace(col)
  valid = not_null(col) & ~_bools(pc.equal(text, ""))
  marker = _bools(pc.is_in(text, value_set=pa.array(list(_NULL_MARKERS))))
  if marker.any():
    i = int(np.flatnonzero(marker)[0])
    at.fail("a null marker, not an id (leave the cell empty for a missing id)", i,
            col[i].as_py())
  decimal = _bools(pc.match_substring_regex(text, r"^[0-9]+(\.0+)?$")) & valid
  digits = pc.utf8_ltrim(pc.replace_substring_regex(text, r"\.0+$", ""), characters="0")
  digits = pc.if_else(pc.equal(digits, ""), "0", digits)  # "000" is 0
  length = pc.fill_null(pc.utf8_length(digits), 0).to_numpy(zero_copy_only=False)
  fits = decimal & (length <= 18)  # below 1e18 < 2^63
  if fits.any():
    out[fits] = pc.cast(digits.filter(pa.array(fits)), pa.int64()).to_numpy()
  near = decimal & (length == 19)  # below 1e19 < 2^64: exact as uint64, kept below 2^63
  if near.any():
    v = pc.cast(digits.filter(pa.array(near)), pa.uint64()).to_numpy()
    small = v < np.uint64(_INT64_LIMIT)
    rows = np.flatnonzero(near)
    out[rows[small]] = v[small].astype(np.int64)
    near[rows[~small]] = False  # hashed below, as their decimal text
  hashed = (valid & ~decimal) | (decimal & ~fits & ~near)
  texts = pc.if_else(pa.array(decimal), digits, text).filter(pa.array(hashed))
  return np.flatnonzero(hashed), texts


def _hash_into(out: np.ndarray, rows: np.ndarray, texts: pa.Array, at: Where) -> None:
  """out[rows] = FNV-1a of ``texts``; refuses two different texts, or a text and a kept
  number, that map to one value (a hash collision merging ids), naming both."""
  if not len(rows):
    return
  enc = plain(texts).dictionary_encode()
  values = fnv64(enc.dictionary)
  out[rows] = values[enc.indices.to_numpy(zero_copy_only=False)]
  kept = np.ones(out.size, bool)
  kept[rows] = False
  numbers = out[kept & (out >= 0)]
  if np.unique(values).size == values.size and not np.isin(values, numbers).any():
    return
  seen = {int(n): repr(int(n)) for n in numbers[np.isin(numbers, values)]}
  for text, value in zip(enc.dictionary.to_pylist(), values.tolist()):
    if value in seen:
      row = int(rows[np.flatnonzero(out[rows] == value)[0]])
      at.fail(f"this id and id {seen[value]} both map to {value} (a hash collision would "
              "merge them): rename one", row, text)
    seen[value] = repr(text)


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
