"""The stream engine's door: which delivered rows are applied, and the dead letters.

Every event row a source delivers is checked with the event-log validator's own per-row rules
(``mcjax.eventlog.validate``: the contract's columns and types, no nulls, ids and timestamps
>= 0, a known domain and event allowed in it, the values' rules such as a watch time >= 0) and
refused with the validator's one-line reason. A row whose source offset is not after the last
applied one (a redelivery) is refused as a duplicate. Log-level rules (an exposure's events
after its ``exposure`` event, ...) are the engine's, as in ``build_samples``.

Refused rows go to the dead-letter file: one JSON line per row, ``{"offset", "reason",
"row"}`` (the row's fields as delivered), and the stream goes on.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa

from mcjax.eventlog import schema as S
from mcjax.eventlog import rules
from mcjax.stream.source import offset_key

_WHERE = "event"


def _check(table: pa.Table) -> pa.Table:
  """The validator's per-row rules on ``table``; returns it conformed (raises
  ``LogValidationError`` at the first broken rule)."""
  table = rules.conform(table, S.EVENT_SCHEMA, _WHERE)
  for name in ("ts_ms", "user_id", "exposure_id", "item_id", "author_id"):
    rules.check_if(_WHERE, name, "negative value", table, rules.column(table, name) < 0)
  dom = rules.codes(table, "domain", S.DOMAINS, _WHERE)
  ev = rules.codes(table, "event", S.EVENTS, _WHERE)
  rules.check_values(table, _WHERE, ev, rules.column(table, "value"), dom)
  return table


def _reason(error: Exception) -> str:
  """The validator's message without its example row (the dead letter carries the row)."""
  text = str(error).split("; e.g.")[0]
  return re.sub(r" \(\d+ row\(s\)\)$", "", text)


def split_malformed(table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
  """(the rows that pass the checks, conformed; [(row index, reason)] of the others)."""
  try:
    return _check(table), []
  except rules.LogValidationError:
    pass
  good, bad = [], []
  for i in range(table.num_rows):
    try:
      _check(table.slice(i, 1))
      good.append(i)
    except rules.LogValidationError as e:
      bad.append((i, _reason(e)))
  kept = table.take(pa.array(good, pa.int64())) if good else table.slice(0, 0)
  try:
    return _check(kept), bad
  except rules.LogValidationError:  # a column missing or mistyped: no row of the batch is usable
    return _empty(), bad


def _empty() -> pa.Table:
  return S.EVENT_SCHEMA.empty_table()


def offset_keys(offsets: list[str]) -> list[tuple[int, ...]]:
  """``source.offset_key`` of each offset (a replay's plain row numbers without the regex)."""
  if all(o.isdigit() for o in offsets):
    return [(int(o),) for o in offsets]
  return [offset_key(o) for o in offsets]


def row_dicts(table: pa.Table, rows) -> list[dict]:
  return [table.slice(int(i), 1).to_pylist()[0] for i in rows]


class DeadLetters:
  """The dead-letter file (JSON lines) and the counts per reason kind."""

  def __init__(self, path: str | None):
    self.path = path
    self.counts: dict[str, int] = {}
    self._file = open(path, "a") if path else None

  def add(self, kind: str, offset: str, reason: str, row: dict) -> None:
    self.counts[kind] = self.counts.get(kind, 0) + 1
    if self._file is not None:
      self._file.write(json.dumps({"offset": offset, "reason": reason, "row": row},
                                  default=_jsonable) + "\n")

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def truncate(self, size: int) -> None:
    """Drops what was written after byte ``size`` (a resume from a checkpoint taken then)."""
    if self._file is not None:
      self._file.flush()
      self._file.truncate(size)
      self._file.seek(size)

  def tell(self) -> int:
    if self._file is None:
      return 0
    self._file.flush()
    return self._file.tell()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  return str(value)
