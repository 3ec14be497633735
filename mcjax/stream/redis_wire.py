"""How event-log rows travel as Redis stream messages, and how they are decoded back.

Four kinds of message, told apart by their fields:

* **row**: one event, a field per ``EVENT_SCHEMA`` column with its value as text
  (``ts_ms=1746057600000 user_id=1 ... event=click value=0.0``): what any producer, in any
  language, can ``XADD``; floats are written with Python's ``repr`` (exact round trip).
* **batch**: ``arrow=<Arrow IPC stream>`` holding several events (``EVENT_SCHEMA``): the
  compact form ``launch.publish`` writes, decoded without a per-row Python step.
* **side**: ``side=<table file name>`` and ``arrow=<Arrow IPC stream>``: side-table rows
  (``users.parquet``, ...), sent before the events that need them.
* **end**: ``end=1``: the publisher's log is complete (a source reading it stops there).

``decode`` turns a run of messages into ``Decoded`` items in message order; a message it
cannot decode becomes a ``dead`` item with a one-line reason naming the message id and the
field (``message 1-0: missing field 'user_id'``), and the others still decode.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from mcjax.eventlog import io
from mcjax.eventlog import schema as S

ARROW, SIDE, END = b"arrow", b"side", b"end"
_ROW_FIELDS = [(f.name, f.name.encode(), f.type) for f in S.EVENT_SCHEMA]


# ---------------------------------------------------------------------------- encoding

def arrow_bytes(table: pa.Table) -> bytes:
  """``table`` as an Arrow IPC stream."""
  sink = pa.BufferOutputStream()
  with pa.ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table)
  return sink.getvalue().to_pybytes()


def row_messages(events: pa.Table) -> list[dict[str, str]]:
  """One row message per event (see the module docstring)."""
  events = io.conform(events, S.EVENT_SCHEMA, "events")
  cols = []
  for name, _, typ in _ROW_FIELDS:
    values = events.column(name).to_pylist()
    cols.append([repr(v) for v in values] if pa.types.is_floating(typ) else
                [str(v) for v in values])
  names = [name for name, _, _ in _ROW_FIELDS]
  return [dict(zip(names, row)) for row in zip(*cols)]


def batch_message(events: pa.Table) -> dict[str, bytes]:
  """One batch message holding every row of ``events``."""
  return {"arrow": arrow_bytes(io.conform(events, S.EVENT_SCHEMA, "events"))}


def side_message(name: str, table: pa.Table) -> dict[str, bytes]:
  """One side message holding rows of side table ``name`` (a key of ``SIDE_TABLES``)."""
  return {"side": name.encode(), "arrow": arrow_bytes(io.conform(table, S.SIDE_TABLES[name],
                                                                 name))}


END_MESSAGE = {"end": b"1"}


# ---------------------------------------------------------------------------- decoding

@dataclasses.dataclass
class Decoded:
  """One decoded stretch of the stream, in message order.

  kind: "events" (``table`` rows; ``ids[i]`` and ``rows[i]`` are the message id and the index
    inside that message of row i), "side" (``table`` holds rows of side table ``side``),
    "dead" (``reason``) or "end".
  """
  kind: str
  ids: list[str]
  table: pa.Table | None = None
  rows: list[int] | None = None
  side: str = ""
  reason: str = ""


def _text(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def decode(messages: list[tuple], where: str = "") -> list[Decoded]:
  """Decodes ``(id, fields)`` pairs as XREADGROUP / XRANGE return them (bytes), in order;
  consecutive row messages decode together into one events item. ``where`` prefixes reasons
  (e.g. the stream's name)."""
  out: list[Decoded] = []
  run: list[tuple[str, dict]] = []  # consecutive row messages

  def flush():
    if run:
      out.extend(_decode_rows(run, where))
      run.clear()

  for mid, fields in messages:
    mid = _text(mid)
    if not fields:  # XDEL'd while pending: XREADGROUP returns the id without fields
      flush()
      out.append(Decoded("dead", [mid], reason=f"{where}message {mid}: deleted from the "
                                                "stream before it was read"))
      continue
    if ARROW not in fields and SIDE not in fields and END not in fields:
      run.append((mid, fields))
      continue
    flush()
    out.append(_decode_one(mid, fields, where))
  flush()
  return out


def _decode_one(mid: str, fields: dict, where: str) -> Decoded:
  if END in fields:
    return Decoded("end", [mid])
  if ARROW not in fields:
    return Decoded("dead", [mid], reason=f"{where}message {mid}: missing field 'arrow' "
                                         "(a side message carries its rows there)")
  side = _text(fields[SIDE]) if SIDE in fields else ""
  if SIDE in fields and side not in S.SIDE_TABLES:
    return Decoded("dead", [mid], reason=f"{where}message {mid}: field side: unknown table "
                                         f"{side!r} (expected one of {sorted(S.SIDE_TABLES)})")
  try:
    with pa.ipc.open_stream(pa.py_buffer(fields[ARROW])) as reader:
      table = reader.read_all()
  except (pa.ArrowException, OSError, TypeError) as e:
    return Decoded("dead", [mid], reason=f"{where}message {mid}: field arrow: not an Arrow "
                                         f"IPC stream ({' '.join(str(e).split())})")
  schema = S.SIDE_TABLES[side] if side else S.EVENT_SCHEMA
  try:
    table = io.conform(table, schema, f"{where}message {mid}: field arrow")
  except ValueError as e:
    return Decoded("dead", [mid], reason=" ".join(str(e).split()))
  nulls = [c for c in schema.names if table.column(c).null_count]
  if nulls:
    return Decoded("dead", [mid], reason=f"{where}message {mid}: field arrow: null values in "
                                         f"column(s) {nulls}")
  if side:
    return Decoded("side", [mid], table=table, side=side)
  n = table.num_rows
  return Decoded("events", [mid] * n, table=table, rows=list(range(n)))


def _decode_rows(run: list[tuple[str, dict]], where: str) -> list[Decoded]:
  """Row messages: all columns cast at once; on any failure, message by message."""
  try:
    cols = [pa.array([f[key] for _, f in run], pa.binary()).cast(pa.string()).cast(typ)
            for _, key, typ in _ROW_FIELDS]
  except (KeyError, pa.ArrowException):
    out: list[Decoded] = []
    for mid, fields in run:
      item = _decode_rows_one(mid, fields, where)
      if out and item.kind == "events" and out[-1].kind == "events":
        last = out[-1]
        last.table = pa.concat_tables([last.table, item.table])
        last.ids += item.ids
        last.rows += item.rows
      else:
        out.append(item)
    return out
  table = pa.Table.from_arrays(cols, schema=S.EVENT_SCHEMA)
  return [Decoded("events", [mid for mid, _ in run], table=table, rows=[0] * len(run))]


def _decode_rows_one(mid: str, fields: dict, where: str) -> Decoded:
  cols = []
  for name, key, typ in _ROW_FIELDS:
    if key not in fields:
      return Decoded("dead", [mid], reason=f"{where}message {mid}: missing field {name!r}")
    raw = fields[key]
    try:
      cols.append(pa.array([raw], pa.binary()).cast(pa.string()).cast(typ))
    except pa.ArrowException:
      return Decoded("dead", [mid], reason=f"{where}message {mid}: field {name}: {raw[:40]!r} "
                                           f"is not {_kind(typ)}")
  return Decoded("events", [mid], table=pa.Table.from_arrays(cols, schema=S.EVENT_SCHEMA),
                 rows=[0])


def _kind(typ: pa.DataType) -> str:
  if pa.types.is_integer(typ):
    return f"an integer ({typ})"
  if pa.types.is_floating(typ):
    return f"a number ({typ})"
  return "UTF-8 text"
