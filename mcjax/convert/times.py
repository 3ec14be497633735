"""Times of foreign source columns -> epoch milliseconds (``parse_times``, ``times_ms``):
the rules are in ``mcjax.convert.sources``'s docstring ("times"); a bad value raises
``SourceError`` naming the file, column, row and value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.convert.sources import MISSING, SourceError, Where, not_null, one_line, plain

_BANDS = np.array([1e11, 1e14, 1e17])  # upper magnitude of epoch s, ms, us (ns above)
_UNITS = ("s", "ms", "us", "ns")
_ISO = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
_NUMBER = r"^[0-9]+(\.[0-9]*)?$"
_TIME_HINT = ("not a time (expected epoch s/ms/us/ns or an ISO 8601 time with a zone, e.g. "
              "2025-05-01T10:00:00+08:00)")


def check_tz(tz: str) -> str:
  """Returns ``tz`` (e.g. "Asia/Shanghai", "+08:00", "UTC") or raises SourceError."""
  try:
    pc.assume_timezone(pa.array([0], pa.timestamp("ms")), timezone=tz)
  except (pa.ArrowException, ValueError) as e:
    raise SourceError(f"--tz={tz}: unknown time zone ({one_line(e)})") from e
  return tz


def times_ms(col, at: Where | None = None, tz: str | None = None) -> np.ndarray:
  """Times -> int64 epoch ms (MISSING if null); see ``parse_times``."""
  return parse_times(col, at, tz)[0]


def parse_times(col, at: Where | None = None, tz: str | None = None) -> tuple[np.ndarray, str]:
  """Times (epoch numbers, ISO 8601 strings, Arrow timestamps) -> (int64 epoch ms with
  MISSING where null, how they were read: e.g. "epoch ms", "ISO 8601 with zone").

  Args:
    col: the column.
    at: where it comes from (for errors).
    tz: the zone of local (zone-less) times; None makes them an error.
  """
  at = at or Where()
  col = plain(col)
  out = np.full(len(col), MISSING, np.int64)
  if pa.types.is_null(col.type) or len(col) == 0:
    return out, "all null"
  if pa.types.is_timestamp(col.type):
    return _arrow_times(col, out, at, tz)
  valid = not_null(col)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    v = col.to_numpy(zero_copy_only=False)
    if v.dtype.kind == "f":
      valid &= ~np.isnan(v)  # NaN: pandas' null in float columns
    rows = np.flatnonzero(valid)
    out[rows], unit = _epoch_ms(v[rows], rows, at)
    return out, f"epoch {unit}"
  if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
    at.fail(f"type {col.type} cannot hold times ({_TIME_HINT})")
  return _text_times(col, valid, out, at, tz)


def _arrow_times(col, out, at: Where, tz) -> tuple[np.ndarray, str]:
  how = f"Parquet {col.type}"
  if col.type.tz is None:
    if tz is None:
      at.fail(f"{col.type} has no time zone: declare the zone of its local times with "
              "--tz (e.g. --tz=Asia/Shanghai)")
    col = pc.assume_timezone(col, timezone=tz)
    how += f" local in {tz}"
  ms = col.cast(pa.timestamp("ms", "UTC"), safe=False).cast(pa.int64())
  valid = not_null(ms)
  out[valid] = ms.filter(pa.array(valid)).to_numpy()
  neg = np.flatnonzero(out < MISSING)
  if neg.size:
    at.fail("a time before 1970", int(neg[0]), col[int(neg[0])].as_py())
  return out, how


def _band(v: np.ndarray) -> np.ndarray:
  return np.searchsorted(_BANDS, np.abs(v), side="right")


def _epoch_ms(v: np.ndarray, rows: np.ndarray, at: Where) -> tuple[np.ndarray, str]:
  """Epoch numbers of one column -> ms, with the unit told by the median's magnitude."""
  if v.size == 0:
    return np.zeros(0, np.int64), "ms"
  bad = ~np.isfinite(v) | (v < 0) if v.dtype.kind == "f" else v < 0
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    at.fail(f"negative or infinite: {_TIME_HINT}", rows[i], v[i].item())
  unit = int(_band(np.median(v)))
  off = _band(v) != unit
  if off.any():
    i = int(np.flatnonzero(off)[0])
    at.fail(f"not epoch {_UNITS[unit]} like the rest of the column (mixed units, or a "
            "placeholder?)", rows[i], v[i].item())
  if v.dtype.kind == "f":
    ms = np.round(v * 10.0 ** (3 - 3 * unit)).astype(np.int64)
  elif unit == 0:
    ms = v.astype(np.int64) * 1000
  else:
    ms = v.astype(np.int64) // 10 ** (3 * unit - 3)
  return ms, _UNITS[unit]


def _match(text, pattern) -> np.ndarray:
  return pc.fill_null(pc.match_substring_regex(text, pattern), False).to_numpy(
      zero_copy_only=False)


def _text_times(col, valid, out, at: Where, tz) -> tuple[np.ndarray, str]:
  """Time strings: epoch numbers, ISO 8601 with a zone, or local ISO 8601 with ``tz``."""
  text = pc.utf8_trim_whitespace(col)
  blank = pc.fill_null(pc.equal(text, ""), False).to_numpy(zero_copy_only=False)
  valid &= ~blank
  number = _match(text, _NUMBER) & valid
  iso = _match(text, _ISO) & valid & ~number
  zoned = iso & _match(text, _ISO + _ZONE)
  local = iso & _match(text, _ISO + "$")
  other = valid & ~number & ~zoned & ~local
  if other.any():
    i = int(np.flatnonzero(other)[0])
    at.fail(_TIME_HINT, i, col[i].as_py())
  if local.any() and tz is None:
    i = int(np.flatnonzero(local)[0])
    at.fail("a local time without a zone: add one (Z, +08:00) or declare the zone of the "
            "file's local times with --tz (e.g. --tz=Asia/Shanghai)", i, col[i].as_py())
  how = []
  if number.any():
    rows = np.flatnonzero(number)
    nums = text.filter(pa.array(number))
    fractional = pc.any(pc.match_substring(nums, ".")).as_py()
    v = pc.cast(nums, pa.float64() if fractional else pa.int64(), safe=False).to_numpy()
    out[rows], unit = _epoch_ms(v, rows, at)
    how.append(f"epoch {unit}")
  for mask, zone, name in ((zoned, None, "ISO 8601 with zone"),
                           (local, tz, f"ISO 8601 local in {tz}")):
    if mask.any():
      out[np.flatnonzero(mask)] = _iso_ms(text, mask, zone, at, col)
      how.append(name)
  return out, " + ".join(how) or "all null"


def _iso_ms(text, mask, zone, at: Where, col) -> np.ndarray:
  """ISO strings of ``mask`` -> epoch ms; ``zone`` for local ones (None: they carry one)."""
  rows = np.flatnonzero(mask)
  try:
    return _iso_cast(text.filter(pa.array(mask)), zone)
  except (pa.ArrowException, ValueError):
    for i in rows:  # find the first string that does not parse (a bad date, a DST gap)
      try:
        _iso_cast(text[int(i):int(i) + 1], zone)
      except (pa.ArrowException, ValueError) as e:
        at.fail(f"not a valid time ({one_line(e)})", int(i), col[int(i)].as_py())
    raise


def _iso_cast(strings, zone) -> np.ndarray:
  if zone is None:
    ts = pc.cast(strings, pa.timestamp("ns", "UTC"))
  else:
    ts = pc.assume_timezone(pc.cast(strings, pa.timestamp("ns")), timezone=zone)
  ms = pc.cast(pc.cast(ts, pa.int64()), pa.int64()).to_numpy()
  ms = np.floor_divide(ms, 1_000_000)
  if (ms < 0).any():
    raise ValueError("a time before 1970")
  return ms
