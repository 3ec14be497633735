"""A Redis Streams source: event-log rows from a stream, through a consumer group.

``RedisSource("redis://host:port/STREAM", group=..., consumer=...)`` reads the messages of
``mcjax.stream.redis_wire`` (row, batch, side and end messages). The group is created at the
start of the stream if it does not exist (``XGROUP CREATE ... 0 MKSTREAM``), so a new group
reads the stream from its first message, side tables included.

Offsets and positions. An event row's offset is ``"<message id>/<row inside the message>"``
(``"1746057600000-0/0"``). ``position()`` is ``{"id": the last message delivered (wholly or
in part), "row": event rows of it delivered, "partial": rows of it remain}``; a batch message
larger than ``max_rows`` is delivered across several reads, so a position may fall inside
one (it is acknowledged only once a position past it is committed).

Delivery, acknowledgement and resume. One consumer reads a stream's whole group (the engine
is stateful: it needs every row, in order). Messages it reads stay pending in the group until
``commit(position)`` acknowledges (XACK) every one up to ``position``. At its first read, or
at ``seek(position)``:

1. every message pending in the group is claimed by this consumer (XAUTOCLAIM), so a
   restarted engine that runs under another consumer name still finds them;
2. the pending messages up to ``position`` (the one it falls inside excepted) are acknowledged: they are in the checkpoint the
   position came from, and are never delivered again; the rest of a message the position
   falls inside is read again (XRANGE) and delivered from the next row;
3. the pending messages after ``position`` (all of them without a position) are delivered
   again, in id order (XREADGROUP with an id: this consumer's pending list);
4. then new messages (XREADGROUP ``>``), waiting up to ``timeout_s`` when none are there.

Restoring a checkpoint older than the last ``commit`` loses the rows acknowledged after it.
An end message (``launch.publish`` writes one after the log) ends the source: ``read``
returns None from then on. Messages that do not decode come back in ``Batch.dead``.
"""

from __future__ import annotations

import collections
import urllib.parse

import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mcjax.eventlog import schema as S
from mcjax.stream import redis_wire as W
from mcjax.stream.source import Batch

DEFAULT_BATCH_ROWS = 4096
_CHUNK = 1000  # ids per XAUTOCLAIM / XPENDING / XACK call
_START = "0-0"


def parse_url(url: str) -> tuple[dict, str]:
  """``redis://[user:password@]host:port/STREAM`` -> (redis.Redis keyword arguments, stream
  name); ValueError naming the url otherwise."""
  u = urllib.parse.urlsplit(url)
  stream = urllib.parse.unquote(u.path.lstrip("/"))
  if u.scheme != "redis" or not u.hostname or not stream or u.query:
    raise ValueError(f"--stream={url}: expected redis://host:port/STREAM_NAME")
  try:
    port = u.port or 6379
  except ValueError:
    raise ValueError(f"--stream={url}: the port is not a number") from None
  return dict(host=u.hostname, port=port, username=u.username, password=u.password), stream


def connect(url: str) -> tuple[redis.Redis, str]:
  """A client for ``url``'s server (checked with PING) and the stream name."""
  kwargs, stream = parse_url(url)
  try:  # fail fast on a wrong address; the client itself retries (redis-py's default)
    with redis.Redis(**kwargs, socket_connect_timeout=10, retry=Retry(NoBackoff(), 0)) as probe:
      probe.ping()
  except redis.RedisError as e:
    raise ConnectionError(f"--stream={url}: no Redis server answers there "
                          f"({type(e).__name__}: {e})") from None
  return redis.Redis(**kwargs, socket_connect_timeout=10), stream


class RedisSource:
  """Reads a Redis stream through a consumer group (see the module docstring).

  Args:
    url: ``redis://host:port/STREAM``.
    group: the consumer group (created at the stream's start if missing).
    consumer: this consumer's name in the group.
    batch_rows: the most rows a ``read`` returns when it is not given ``max_rows``.
  """

  def __init__(self, url: str, group: str = "mcjax", consumer: str = "engine",
               batch_rows: int = DEFAULT_BATCH_ROWS):
    self.client, self.stream = connect(url)
    self.name, self.group, self.consumer = url, group, consumer
    self.batch_rows = int(batch_rows)
    try:
      self.client.xgroup_create(self.stream, group, id=_START, mkstream=True)
    except redis.ResponseError as e:
      if "BUSYGROUP" not in str(e):
        raise
    self._where = f"{url} "
    self._pos = {"id": _START, "row": 0, "partial": False}
    self._queue: collections.deque[W.Decoded] = collections.deque()
    self._head = 0           # rows of the queue's first (events) item already delivered
    self._cursor: str | None = None  # pending-list cursor (an id), None once on new messages
    self._started = False
    self._ended = False
    self._rows_per_message = 1  # of the last fetch: how many messages a read asks for

  # -------------------------------------------------------------------------- position

  def position(self) -> dict:
    return dict(self._pos)

  def seek(self, position: dict) -> None:
    mid, row, partial = self._parse(position, "seek")
    self._start(mid, row, partial)

  def commit(self, position: dict) -> None:
    """XACK of every pending message of the group up to ``position`` (the message it falls
    inside excepted)."""
    mid, _, partial = self._parse(position, "commit")
    self._ack_upto(mid, partial)

  def _parse(self, position: dict, what: str) -> tuple[str, int, bool]:
    try:
      mid, row, partial = str(position["id"]), int(position["row"]), bool(position["partial"])
      _id_key(mid)
    except (KeyError, TypeError, ValueError):
      raise ValueError(f"{self.name}: {what}({position!r}) is not a Redis position (expected "
                       "{'id': '<ms>-<seq>', 'row': int, 'partial': bool})") from None
    return mid, row, partial

  def close(self) -> None:
    self.client.close()

  # -------------------------------------------------------------------------- start

  def _start(self, mid: str, row: int, partial: bool) -> None:
    """Steps 1-3 of the module docstring, from position (``mid``, ``row``)."""
    self._claim_pending()
    self._queue.clear()
    self._head, self._ended = 0, False
    self._pos = {"id": mid, "row": row, "partial": partial}
    if mid != _START:
      self._ack_upto(mid, partial)
    if partial:  # the rest of the message the position falls inside
      for item in W.decode(self.client.xrange(self.stream, mid, mid), self._where):
        if item.kind == "events" and row < item.table.num_rows:
          self._queue.append(item)
          self._head = row
    self._cursor = mid
    self._started = True

  def _claim_pending(self) -> None:
    cursor = _START
    while True:
      reply = self.client.xautoclaim(self.stream, self.group, self.consumer, 0,
                                     start_id=cursor, count=_CHUNK)  # (justid drops the cursor)
      cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
      if cursor == _START:
        return

  def _ack_upto(self, mid: str, partial: bool) -> None:
    if mid == _START:
      return
    last = f"({mid}" if partial else mid  # "(": an exclusive bound
    while True:
      pending = self.client.xpending_range(self.stream, self.group, "-", last, _CHUNK)
      if not pending:
        return
      self.client.xack(self.stream, self.group, *[p["message_id"] for p in pending])
      if len(pending) < _CHUNK:
        return

  # -------------------------------------------------------------------------- reading

  def _fetch(self, rows: int, block_ms: int | None) -> bool:
    """Appends the next messages, about ``rows`` event rows' worth (by the rows per message
    seen last), to the queue; False when none came."""
    count = max(1, min(_CHUNK, -(-rows // self._rows_per_message)))
    if self._cursor is not None:  # this consumer's pending list first
      reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: self._cursor},
                                     count=count)
      messages = reply[0][1] if reply else []
      if messages:
        last = messages[-1][0]
        self._cursor = last.decode() if isinstance(last, bytes) else str(last)
      else:
        self._cursor = None
    if self._cursor is None:
      reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                     count=count, block=block_ms)
      messages = reply[0][1] if reply else []
    items = W.decode(messages, self._where)
    self._queue.extend(items)
    if messages:
      rows = sum(it.table.num_rows for it in items if it.kind == "events")
      self._rows_per_message = max(1, rows // len(messages))
    return bool(messages)

  def read(self, max_rows: int | None = None, timeout_s: float = 0.0) -> Batch | None:
    """Up to ``max_rows`` rows (default ``batch_rows``) of the messages next in line,
    waiting up to ``timeout_s`` for new ones when none are there; a side message after
    events ends the batch (side rows apply before the events of their batch). None after
    the end message."""
    limit = self.batch_rows if max_rows is None else int(max_rows)
    if limit < 1:
      raise ValueError(f"{self.name}: read(max_rows={max_rows}) must ask for >= 1 row")
    if not self._started:
      self._start(_START, 0, False)
    if self._ended and not self._queue:
      return None
    tables, offsets, side, dead = [], [], {}, []
    n = 0
    waited = False
    while n < limit and not self._ended:
      if not self._queue:
        if n or side or dead:  # something to return: take only what is already there
          if not self._fetch(limit - n, None):
            break
        elif waited or not self._fetch(limit, _block_ms(timeout_s)):
          break
        waited = True
        continue
      item = self._queue[0]
      if item.kind == "events":
        take = min(limit - n, item.table.num_rows - self._head)
        part = slice(self._head, self._head + take)
        tables.append(item.table.slice(self._head, take))
        offsets += [f"{m}/{r}" for m, r in zip(item.ids[part], item.rows[part])]
        n += take
        self._head += take
        done = self._head == item.table.num_rows
        partial = not done and item.ids[self._head] == item.ids[self._head - 1]
        self._pos = {"id": item.ids[self._head - 1], "row": item.rows[self._head - 1] + 1,
                     "partial": partial}
        if done:
          self._queue.popleft()
          self._head = 0
        continue
      if item.kind == "side" and n:
        break  # the events of this batch came before it
      self._queue.popleft()
      if item.kind == "side":
        side[item.side] = (pa.concat_tables([side[item.side], item.table])
                           if item.side in side else item.table)
      elif item.kind == "dead":
        dead.append((item.ids[0], item.reason))
      else:
        self._ended = True
      self._pos = {"id": item.ids[0], "row": 0, "partial": False}
    if self._ended and not (n or side or dead):
      return None
    events = pa.concat_tables(tables) if tables else S.EVENT_SCHEMA.empty_table()
    return Batch(events=events, offsets=offsets, side=side, dead=dead)


def _block_ms(timeout_s: float) -> int | None:
  """XREADGROUP's BLOCK for a timeout: None (no wait) for 0; BLOCK 0 would wait forever."""
  return max(1, round(timeout_s * 1000)) if timeout_s > 0 else None


def _id_key(mid: str) -> tuple[int, int]:
  ms, _, seq = mid.partition("-")
  return int(ms), int(seq or 0)
