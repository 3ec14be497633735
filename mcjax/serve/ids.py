"""Request ids and times as int64, or refused: never rounded, wrapped or guessed.

A request file's ``request_id``, ``user_id``, ``ts_ms`` and ``live_id`` columns, and the
``user_id``, ``ts_ms`` and ``live_ids`` arguments of ``Scorer.score``, are accepted when they
are integers (an integer dtype, or Python ints) or decimal text that parses exactly
(``"123"``), in the int64 range and not negative (an event log holds no negative id or time).
Anything else -- a float column (even of whole numbers: NaN and fractions hide in them), a
fraction, NaN, a null, other text, a value beyond int64 -- raises ``IdError`` naming the
column or argument and the first bad row.

``check_requests`` adds the rules of a request file: no empty file, one user and one time per
``request_id``, and no live twice in one request (a duplicate would be ranked against itself).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INT64_MAX = np.iinfo(np.int64).max
_DECIMAL = re.compile(r"[+-]?[0-9]+")


class IdError(ValueError):
  """An id or time that is not an exact non-negative int64 integer."""


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _fail(what: str, row: int | None, value, why: str) -> None:
  at = "" if row is None else f", row {row}"
  raise IdError(f"{what}{at}: {_short(value)}: {why}")


def _check_range(what: str, values: np.ndarray) -> np.ndarray:
  bad = np.flatnonzero(values < 0)
  if len(bad):
    _fail(what, int(bad[0]), int(values[bad[0]]), "a negative id or time (an event log "
          "holds none)")
  return values.astype(np.int64, copy=False)


def _from_text(what: str, values) -> np.ndarray:
  out = np.zeros(len(values), np.int64)
  for row, text in enumerate(values):
    if text is None:
      _fail(what, row, None, "a missing value, not an integer")
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    if not _DECIMAL.fullmatch(s.strip()):
      _fail(what, row, text, "not an integer (decimal digits expected)")
    n = int(s)
    if not 0 <= n <= _INT64_MAX:
      _fail(what, row, text, "outside 0..2^63-1" if n >= 0 else
            "a negative id or time (an event log holds none)")
    out[row] = n
  return out


def column_ids(table: pa.Table, name: str, where: str) -> np.ndarray:
  """Column ``name`` of ``table`` as int64; ``where`` names the file for the message."""
  what = f"{where}: column {name!r}"
  col = table.column(name)
  kind = col.type
  if col.null_count:
    row = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
    _fail(what, row, None, "a missing value, not an integer")
  if pa.types.is_dictionary(kind):
    col, kind = col.cast(kind.value_type), kind.value_type
  if pa.types.is_integer(kind):
    values = col.to_numpy()
    if values.dtype == np.uint64:
      big = np.flatnonzero(values > _INT64_MAX)
      if len(big):
        _fail(what, int(big[0]), int(values[big[0]]), "outside 0..2^63-1")
    return _check_range(what, values.astype(np.int64) if values.dtype == np.uint64 else values)
  if pa.types.is_string(kind) or pa.types.is_large_string(kind):
    return _from_text(what, col.to_pylist())
  values = col.to_numpy(zero_copy_only=False)
  if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
    values = np.asarray(values, np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    row = int(bad[0]) if len(bad) else 0
    _fail(what, row, float(values[row]) if len(values) else None,
          f"{kind} is not an integer type (store ids and times as int64)")
  _fail(what, None, str(kind), "not an integer type (store ids and times as int64)")
  raise AssertionError  # unreachable


def argument_ids(value, name: str) -> np.ndarray:
  """An argument (a scalar or a sequence) as a 1-d int64 array; ``name`` names it."""
  what = f"{name}"
  if isinstance(value, (str, bytes)):
    return _from_text(what, [value])
  array = np.asarray(value, dtype=object if isinstance(value, (list, tuple)) else None)
  array = np.atleast_1d(array)
  if array.ndim != 1:
    _fail(what, None, array.shape, "expected one id or a flat sequence of ids")
  if np.issubdtype(array.dtype, np.integer):
    if array.dtype == np.uint64 and len(array) and int(array.max()) > _INT64_MAX:
      row = int(np.argmax(array > _INT64_MAX))
      _fail(what, row, int(array[row]), "outside 0..2^63-1")
    return _check_range(what, array.astype(np.int64))
  out = np.zeros(len(array), np.int64)
  for row, v in enumerate(array.tolist()):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, str, bytes)):
      _fail(what, row if len(array) > 1 else None, v, "not an integer")
    out[row] = (_from_text(what, [v]) if isinstance(v, (str, bytes)) else
                _from_int(what, row if len(array) > 1 else None, int(v)))[0]
  return out


def _from_int(what: str, row, n: int) -> np.ndarray:
  if n < 0:
    _fail(what, row, n, "a negative id or time (an event log holds none)")
  if n > _INT64_MAX:
    _fail(what, row, n, "outside 0..2^63-1")
  return np.asarray([n], np.int64)


def check_requests(req: dict[str, np.ndarray], where: str) -> None:
  """Refuses an empty request file, a request_id with several users or times, and a live
  listed twice in one request (rows are numbered from 0, in file order)."""
  n = len(req["request_id"])
  if not n:
    raise IdError(f"{where}: no rows (nothing to score)")
  order = np.lexsort((np.arange(n), req["request_id"]))
  rid = req["request_id"][order]
  same = rid[1:] == rid[:-1]
  for column in ("user_id", "ts_ms"):
    v = req[column][order]
    bad = np.flatnonzero(same & (v[1:] != v[:-1]))
    if len(bad):
      i, j = sorted((int(order[bad[0]]), int(order[bad[0] + 1])))
      raise IdError(f"{where}: request_id {int(rid[bad[0]])} has several {column} values "
                    f"(rows {i} and {j}): one request is one user at one time; give each its "
                    "own request_id")
  order = np.lexsort((np.arange(n), req["live_id"], req["request_id"]))
  rid, live = req["request_id"][order], req["live_id"][order]
  bad = np.flatnonzero((rid[1:] == rid[:-1]) & (live[1:] == live[:-1]))
  if len(bad):
    i, j = sorted((int(order[bad[0]]), int(order[bad[0] + 1])))
    raise IdError(f"{where}: request_id {int(rid[bad[0]])} lists live_id {int(live[bad[0]])} "
                  f"twice (rows {i} and {j}): a candidate is ranked once; drop the duplicate")


def check_distinct(values: np.ndarray, name: str) -> None:
  """Refuses an id listed twice (``Scorer.score``'s live_ids)."""
  if not len(values):
    raise IdError(f"{name}: no candidates (nothing to score)")
  order = np.argsort(values, kind="stable")
  v = values[order]
  bad = np.flatnonzero(v[1:] == v[:-1])
  if len(bad):
    i, j = sorted((int(order[bad[0]]), int(order[bad[0] + 1])))
    raise IdError(f"{name}: {int(v[bad[0]])} is listed twice (rows {i} and {j}): a candidate "
                  "is ranked once; drop the duplicate")
