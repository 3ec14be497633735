"""The Redis source against a real redis-server that the tests start (the test extra bundles
it; a missing server fails, never skips): a published log reads back exactly as the replay
gives it, a restarted consumer resumes with no row lost or doubled, malformed messages go to
Batch.dead with their reason and the stream goes on."""

import os
import subprocess
import sys
import uuid

import pyarrow as pa
import pytest
import redis

from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.stream import redis_server
from mcjax.stream import redis_wire as W
from mcjax.stream.redis_source import RedisSource, parse_url
from mcjax.stream.replay import ReplaySource
from mcjax.stream.source import offset_key

from mcjax.stream import publish as P
import test_stream_replay as tr  # tiny logs: the example, and a random one in parts with ties
import test_validate as tv

ROOT = tv.ROOT


@pytest.fixture
def server(redis_server):  # conftest: the session's real redis-server
  return redis_server


@pytest.fixture
def url(server):
  """A fresh stream for each test."""
  return server.url(f"events-{uuid.uuid4().hex[:8]}")


def _drain(src, max_rows, limit=10_000):
  batches = []
  for _ in range(limit):
    b = src.read(max_rows, timeout_s=0)
    if b is None:
      return batches
    batches.append(b)
  raise AssertionError("the source did not end")


def _rows(batches):
  return pa.concat_tables([b.events for b in batches]) if batches else None


def test_the_bundled_server_runs_streams(server):
  assert os.path.basename(redis_server.server_binary()) == "redis-server"
  client = redis.Redis(port=server.port)
  version = tuple(int(v) for v in client.info("server")["redis_version"].split(".")[:2])
  assert version >= (6, 2)  # XAUTOCLAIM and exclusive XPENDING ranges
  assert client.config_get("save") == {"save": ""}  # no persistence


@pytest.mark.parametrize("message", ["batch", "row"])
def test_published_log_reads_back_exactly_as_the_replay(tmp_path, url, message):
  log, _ = tr._random_log_in_parts(tmp_path)
  replay = tr._drain(ReplaySource(log), 1000)
  got = P.publish(log, url, batch_rows=9, message=message)
  assert got.events == _rows(replay).num_rows
  assert got.side_rows == sum(t.num_rows for t in replay[0].side.values())
  src = RedisSource(url, group="g", consumer="c")
  batches = _drain(src, 20)
  assert batches[0].side.keys() == replay[0].side.keys()
  for name, table in replay[0].side.items():
    assert batches[0].side[name].equals(table)
  assert all(b.side == {} and b.dead == [] for b in batches[1:])
  assert _rows(batches).equals(_rows(replay))  # every field, the order, ties included
  offsets = [o for b in batches for o in b.offsets]
  assert sorted(offsets, key=offset_key) == offsets and len(set(offsets)) == len(offsets)
  assert all(len(b) <= 20 for b in batches)
  assert src.read(20) is None  # after the end message


@pytest.mark.parametrize("message,consumer", [("batch", "c"), ("batch", "other"),
                                              ("row", "c")])
def test_restarted_consumer_resumes_with_no_row_lost_or_doubled(tmp_path, url, message,
                                                                consumer):
  log, events = tr._random_log_in_parts(tmp_path)
  P.publish(log, url, batch_rows=7, message=message)
  first = RedisSource(url, group="g", consumer="c")
  got = [first.read(5) for _ in range(3)]
  first.commit(first.position())      # checkpointed and acknowledged
  got += [first.read(5) for _ in range(3)]
  checkpoint = first.position()       # checkpointed, not yet acknowledged
  if message == "batch":
    assert checkpoint["partial"]      # 30 of 7-row messages: inside the fifth
  lost = [first.read(5) for _ in range(4)]  # delivered after the checkpoint: the crash loses
  assert sum(len(b) for b in lost) == 20
  first.client.close()                # "killed": nothing more acknowledged

  again = RedisSource(url, group="g", consumer=consumer)
  again.seek(checkpoint)
  rest = _drain(again, 5)
  assert all(b.side == {} for b in rest)
  assert _rows(got + rest).equals(events)
  offsets = [o for b in got + rest for o in b.offsets]
  assert len(set(offsets)) == len(offsets) == events.num_rows
  assert [o for b in lost for o in b.offsets] == [o for b in rest for o in b.offsets][:20]
  again.commit(again.position())
  assert again.client.xpending(again.stream, "g")["pending"] == 0


def test_paced_publish_sends_the_same_rows(tmp_path, url):
  log = io.write_log(str(tmp_path / "log"), *tv._example())  # 85 logged s: 17 wall ms
  P.publish(log, url, speed=5000, batch_rows=5, linger_s=0.002)
  batches = _drain(RedisSource(url), 100)
  assert _rows(batches).equals(tv._example()[0])
  assert batches[0].side.keys() == set(S.SIDE_TABLES)


def test_commit_keeps_a_partly_delivered_message_pending(tmp_path, url):
  log = io.write_log(str(tmp_path / "log"), *tv._example())
  P.publish(log, url, batch_rows=12)  # side messages, one 12-row message, the end
  src = RedisSource(url, group="g", consumer="c")
  src.read(5)
  src.commit(src.position())  # the side messages only: the events message is half read
  pending = src.client.xpending_range(src.stream, "g", "-", "+", 10)
  assert [p["message_id"].decode() for p in pending] == [src.position()["id"]]
  # Without a position (no checkpoint) a new consumer gets every unacknowledged message.
  fresh = RedisSource(url, group="g", consumer="new")
  assert _rows(_drain(fresh, 100)).equals(tv._example()[0])


def test_malformed_messages_go_to_dead_and_the_stream_goes_on(url):
  events, _ = tv._example()
  rows = W.row_messages(events)
  client = redis.Redis(**parse_url(url)[0])
  stream = parse_url(url)[1]
  bad = [
      {k: v for k, v in rows[1].items() if k != "user_id"},
      {**rows[1], "ts_ms": "12.5x"},
      {**rows[1], "value": "lots"},
      {"arrow": b"not arrow at all"},
      {"arrow": W.arrow_bytes(events.slice(0, 2).drop_columns(["domain"]))},
      {"side": b"friends.parquet", "arrow": W.arrow_bytes(events)},
      {"side": b"users.parquet"},
  ]
  ids = [client.xadd(stream, rows[0]).decode()]
  for fields in bad:
    ids.append(client.xadd(stream, fields).decode())
  ids.append(client.xadd(stream, W.batch_message(events.slice(1, 11))).decode())
  client.xadd(stream, W.END_MESSAGE)
  batches = _drain(RedisSource(url, group="g", consumer="c"), 100)
  assert _rows(batches).equals(events)  # the good ones, all of them, in order
  assert [o for b in batches for o in b.offsets] == [f"{ids[0]}/0"] + [
      f"{ids[-1]}/{i}" for i in range(11)]
  where = f"{url} message"
  assert [d for b in batches for d in b.dead] == [
      (ids[1], f"{where} {ids[1]}: missing field 'user_id'"),
      (ids[2], f"{where} {ids[2]}: field ts_ms: b'12.5x' is not an integer (int64)"),
      (ids[3], f"{where} {ids[3]}: field value: b'lots' is not a number (double)"),
      (ids[4], f"{where} {ids[4]}: field arrow: not an Arrow IPC stream (Expected to read "
               "544501614 metadata bytes, but only read 12)"),
      (ids[5], f"{where} {ids[5]}: field arrow: missing column(s) ['domain']"),
      (ids[6], f"{where} {ids[6]}: field side: unknown table 'friends.parquet' (expected one "
               f"of {sorted(S.SIDE_TABLES)})"),
      (ids[7], f"{where} {ids[7]}: missing field 'arrow' (a side message carries its rows "
               "there)"),
  ]


def test_side_rows_end_a_batch_and_apply_before_later_events(url):
  events, side = tv._example()
  client = redis.Redis(**parse_url(url)[0])
  stream = parse_url(url)[1]
  client.xadd(stream, W.batch_message(events.slice(0, 4)))
  client.xadd(stream, W.side_message("lives.parquet", side["lives.parquet"]))
  client.xadd(stream, W.batch_message(events.slice(4)))
  src = RedisSource(url, group="g", consumer="c")
  first, second = src.read(100), src.read(100)
  assert len(first) == 4 and first.side == {}
  assert len(second) == 8 and second.side["lives.parquet"].equals(side["lives.parquet"])
  # No end message: an open stream waits (here 10 ms) and returns an empty batch.
  empty = src.read(100, timeout_s=0.01)
  assert len(empty) == 0 and empty.offsets == [] and empty.dead == []
  client.xadd(stream, W.row_messages(events.slice(0, 1))[0])
  assert src.read(100, timeout_s=1.0).events.equals(events.slice(0, 1))


def test_bad_urls_and_positions_are_refused_in_one_line(url):
  with pytest.raises(ValueError, match=r"^--stream=http://x/s: expected redis://host:port/"):
    parse_url("http://x/s")
  with pytest.raises(ValueError, match=r"expected redis://host:port/STREAM_NAME$"):
    parse_url("redis://127.0.0.1:6379/")
  src = RedisSource(url)
  with pytest.raises(ValueError, match=r"seek\(\{'rows': 3\}\) is not a Redis position"):
    src.seek({"rows": 3})
  port = redis_server.free_port()
  with pytest.raises(ConnectionError, match=rf"^--stream=redis://127.0.0.1:{port}/s: no Redis "
                     "server answers there"):
    RedisSource(f"redis://127.0.0.1:{port}/s")


def test_publish_launcher_prints_what_it_sent_or_one_error_line(tmp_path, url):
  log = io.write_log(str(tmp_path / "log"), *tv._example())
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  ok = subprocess.run([sys.executable, "-m", "launch.publish", f"--log={log}",
                       f"--stream={url}", "--batch_rows=5", "--message=row"],
                      capture_output=True, text=True, cwd=ROOT, env=env)
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.startswith("published 12 event rows and 7 side rows in 17 messages in ")
  assert _rows(_drain(RedisSource(url), 100)).equals(tv._example()[0])
  bad = subprocess.run([sys.executable, "-m", "launch.publish", f"--log={tmp_path}/none",
                        f"--stream={url}"], capture_output=True, text=True, cwd=ROOT, env=env)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
      f"launch.publish: {tmp_path}/none/events.parquet: missing file")


def test_redis_server_command_serves_until_stopped():
  port = redis_server.free_port()
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.Popen([sys.executable, "-m", "mcjax.stream.redis_server", f"--port={port}"],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
  try:
    line = proc.stdout.readline()
    assert line.endswith(f"listening: redis://127.0.0.1:{port}/STREAM (Ctrl-C stops it)\n")
    assert redis.Redis(port=port).ping()
  finally:
    proc.terminate()
    assert proc.wait(20) == 0
  with pytest.raises(redis.ConnectionError):  # the server went with it
    redis.Redis(port=port, retry=None).ping()
