"""The row-level rules of the event log, shared by the log validator (``validate``) and the
stream engine's row checks (``mcjax.stream.rows``): one place for each rule and its one-line
reason.

``conform`` checks a table's columns, types and nulls against a schema; ``codes`` maps the
domain / event strings to their codes; ``check_values`` applies the value and domain rules
of the events (see ``validate``'s docstring); ``fail`` / ``check_if`` raise
``LogValidationError`` naming the file, the column, the problem and one offending row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.eventlog import schema as S


class LogValidationError(ValueError):
  """A log (or table) breaks the event-log contract; the message says where and how."""


# Source types that convert losslessly into each contract type.
_WIDENS = {
    pa.int64(): (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                 pa.uint8(), pa.uint16(), pa.uint32()),
    pa.int32(): (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()),
    pa.float64(): (pa.float16(), pa.float32(), pa.float64()),
    pa.float32(): (pa.float16(), pa.float32()),
    pa.bool_(): (pa.bool_(),),
    pa.string(): (pa.string(), pa.large_string(), pa.string_view()),
}

_ZERO_VALUE_EVENTS = (S.EXPOSURE, S.CLICK, S.LIKE, S.COMMENT, S.FOLLOW)


def _row(table: pa.Table, i: int, first_row: int = 0) -> str:
  values = table.slice(int(i), 1).to_pylist()[0]
  return f"row {int(i) + first_row}: " + ", ".join(f"{k}={v!r}" for k, v in values.items())


def fail(where: str, column: str | None, problem: str, table: pa.Table | None = None,
          mask: np.ndarray | None = None, row: int | None = None, first_row: int = 0) -> None:
  """Raises LogValidationError; ``mask`` (or ``row``) points at the offending row(s);
  ``first_row``: the table's first row in the file (a batch of it was checked)."""
  msg = f"{where}: column '{column}': {problem}" if column else f"{where}: {problem}"
  if mask is not None:
    bad = np.flatnonzero(mask)
    row = int(bad[0])
    msg += f" ({bad.size} row(s))"
  if table is not None and row is not None:
    msg += f"; e.g. {_row(table, row, first_row)}"
  raise LogValidationError(msg)


def check_if(where, column, problem, table, mask) -> None:
  if np.any(mask):
    fail(where, column, problem, table, mask)


def conform(table: pa.Table, schema: pa.Schema, where: str, first_row: int = 0) -> pa.Table:
  """Checks columns, types and nulls; returns the table cast to ``schema`` (its columns only).
  ``first_row``: where ``table`` starts in the file, when it is a batch of it (row numbers in
  messages count from the file's start; the row count is the batch's)."""
  for field in schema:
    if field.name not in table.column_names:
      fail(where, field.name, f"missing column (has {table.column_names})")
    typ = table.schema.field(field.name).type
    if pa.types.is_dictionary(typ):
      typ = typ.value_type
    if typ not in _WIDENS[field.type]:
      fail(where, field.name, f"wrong type {typ}, expected {field.type} "
            f"(or a lossless widening: {', '.join(map(str, _WIDENS[field.type]))})"
            + nan_hint(table.column(field.name), typ, first_row))
    col = table.column(field.name)
    if col.null_count:
      fail(where, field.name, "null values", table, pc.is_null(col).to_numpy(zero_copy_only=False),
            first_row=first_row)
  columns, fields = [], []
  for field in schema:
    col = table.column(field.name)
    if pa.types.is_dictionary(col.type) and pa.types.is_string(field.type):
      fields.append(pa.field(field.name, pa.dictionary(pa.int32(), pa.string())))
      columns.append(col.cast(fields[-1].type))  # kept encoded: codes maps the dictionary
      continue
    if pa.types.is_dictionary(col.type):
      col = col.cast(col.type.value_type)
    columns.append(col.cast(field.type))
    fields.append(field)
  return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def nan_hint(col, typ, first_row: int = 0) -> str:
  """"; row i holds NaN" when a float column meant to hold ints has a NaN (else "")."""
  if not pa.types.is_floating(typ):
    return ""
  nan = pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)
  return f"; row {int(np.flatnonzero(nan)[0]) + first_row} holds NaN" if nan.any() else ""


def column(table: pa.Table, name: str) -> np.ndarray:
  return table.column(name).to_numpy()


def codes(table: pa.Table, column: str, names, where: str) -> np.ndarray:
  """Maps a string column (plain or dictionary-encoded) to indices of ``names``; fails on
  unknown values. A dictionary column is mapped through its dictionary (no string work per
  row)."""
  col = table.column(column)
  value_set = pa.array(list(names))
  if pa.types.is_dictionary(col.type):
    pieces = []
    for chunk in col.chunks:
      table_of = pc.fill_null(pc.index_in(chunk.dictionary, value_set=value_set), -1)
      lookup = table_of.to_numpy(zero_copy_only=False).astype(np.int64)
      pieces.append(lookup[chunk.indices.to_numpy(zero_copy_only=False)] if len(lookup)
                    else np.zeros(len(chunk), np.int64))
    idx = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
  else:
    arr = pc.index_in(col, value_set=value_set)
    idx = pc.fill_null(arr, -1).to_numpy(zero_copy_only=False).astype(np.int64)
  check_if(where, column, f"unknown {column} (expected one of {list(names)})", table, idx < 0)
  return idx


def first_event(ev: np.ndarray, mask: np.ndarray) -> int:
  """The event code of the first row of ``mask``."""
  return int(ev[np.flatnonzero(mask)[0]])


def check_values(table, where, ev, value, dom) -> None:
  """Value and domain rules through per-code lookup tables (one pass each, not one per event)."""
  check_if(where, "value", "NaN or infinite value", table, ~np.isfinite(value))
  code = S.EVENT_CODE
  zero = np.isin(np.arange(len(S.EVENTS)), [code[e] for e in _ZERO_VALUE_EVENTS])
  bad = zero[ev] & (value != 0)
  if bad.any():
    e = first_event(ev, bad)
    fail(where, "value", f"{S.EVENTS[e]} must have value 0", table, bad & (ev == e))
  check_if(where, "value", f"negative {S.WATCH_END} value", table,
            (ev == code[S.WATCH_END]) & (value < 0))
  check_if(where, "value", "gift value must be > 0", table, (ev == code[S.GIFT]) & (value <= 0))
  allowed = np.zeros((len(S.DOMAINS), len(S.EVENTS)), bool)
  for d, events in S.DOMAIN_EVENTS.items():
    allowed[S.DOMAIN_CODE[d], [code[e] for e in events]] = True
  bad = ~allowed[dom, ev]
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    fail(where, "event", f"event '{S.EVENTS[ev[i]]}' not allowed in domain "
          f"'{S.DOMAINS[dom[i]]}'", table, bad & (ev == ev[i]) & (dom == dom[i]))
