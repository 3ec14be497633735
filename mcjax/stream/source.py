"""The event-source protocol: batches of event-log rows with a resumable position.

A source delivers the rows of an event log (``mcjax.eventlog.schema.EVENT_SCHEMA``) in its
delivery order, plus side-table rows (users, authors, lives, videos) as they arrive. Every
event row carries the source's own offset for it (a replay: the row number in event-time
order; Redis: the message id and the row's index inside the message), so a consumer can
apply a row delivered twice only once.

A consumer checkpoints ``position()`` together with its own state, and after a restart calls
``seek(position)`` before reading: the source then delivers exactly the rows after that
position. ``commit(position)`` tells the source that everything up to ``position`` is safely
checkpointed (Redis: XACK of the consumer group's pending messages); a source may redeliver
anything not committed.

Anything a source cannot decode (a message with a missing field, a wrong type) is not
raised: it comes back in ``Batch.dead`` as (offset, one-line reason), and the stream goes on.

A Kafka source is a short adapter: ``read`` polls a consumer, offsets are
``{partition: offset}`` and ``commit`` commits them (docs/streaming_sources.md).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol

import pyarrow as pa


@dataclasses.dataclass(frozen=True)
class Batch:
  """What one ``Source.read`` returns.

  events: event-log rows (``EVENT_SCHEMA``) in delivery order.
  offsets: one source offset (str) per event row, increasing in delivery order as
    ``offset_key`` compares them (a replay: "17"; Redis: "1700000000000-0/3").
  side: side-table rows that arrived with this batch, by table file name
    (``users.parquet``, ...; ``mcjax.eventlog.schema.SIDE_TABLES``); may be empty. They
    apply before the batch's events (a source ends a batch before side rows that follow
    events).
  dead: (offset, reason) of messages the source could not decode.
  """
  events: pa.Table
  offsets: list[str]
  side: dict[str, pa.Table] = dataclasses.field(default_factory=dict)
  dead: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return self.events.num_rows


_OFFSET = re.compile(r"\d+(?:[-/]\d+)*")


def offset_key(offset: str) -> tuple[int, ...]:
  """The integers of an offset ("1700000000000-0/3" -> (1700000000000, 0, 3)): offsets of one
  source compare in delivery order by this key (plain strings do not: "10" < "9")."""
  if not _OFFSET.fullmatch(offset):
    raise ValueError(f"offset {offset!r} is not integers joined by '-' or '/'")
  return tuple(int(p) for p in re.split(r"[-/]", offset))


class Source(Protocol):
  """A resumable source of event-log rows (see the module docstring)."""

  name: str  # for logs and dead letters, e.g. "replay:runs/default/world"

  def read(self, max_rows: int | None = None, timeout_s: float = 0.0) -> Batch | None:
    """Up to ``max_rows`` rows (None: the source's own batch size); an empty batch if nothing
    came within ``timeout_s``; None once a bounded source (a replay) is exhausted."""
    ...

  def position(self) -> dict:
    """A JSON-serialisable position just after the last batch returned."""
    ...

  def seek(self, position: dict) -> None:
    """Continue after ``position`` (from ``position()``, possibly of an earlier process)."""
    ...

  def commit(self, position: dict) -> None:
    """Everything up to ``position`` is checkpointed; the source may forget it."""
    ...

  def close(self) -> None:
    ...
