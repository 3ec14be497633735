"""ReplaySource: the log's rows in the log's order (parts too), side tables first, a resumable
position, and pacing at a speed factor (a fake clock: no timing asserts)."""

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.moment.synth import random_log
from mcjax.stream.replay import ReplaySource
from mcjax.stream.source import offset_key

import test_validate as tv  # the example log

T0 = 1_746_057_600_000


def _example_log(tmp_path) -> str:
  return io.write_log(str(tmp_path / "log"), *tv._example())


def _random_log_in_parts(tmp_path) -> tuple[str, pa.Table]:
  """A random log whose events.parquet is a folder of three parts (plus a _SUCCESS file),
  its times cut to 10 s so that many rows tie on (ts_ms, exposure_id)."""
  t = random_log(30, users=8, lives=4, hours=0.3, seed=7)
  ts = pa.array(t.events.column("ts_ms").to_numpy() // 10_000 * 10_000, pa.int64())
  coarse = t.events.set_column(0, "ts_ms", ts)
  coarse = coarse.take(pc.sort_indices(coarse, [("ts_ms", "ascending"),
                                                ("exposure_id", "ascending")]))  # stable
  side = {"users.parquet": t.users, "authors.parquet": t.authors, "lives.parquet": t.lives,
          "videos.parquet": t.videos}
  log = io.write_log(str(tmp_path / "parts"), coarse, side)
  events = pq.read_table(os.path.join(log, S.EVENTS_FILE))
  os.remove(os.path.join(log, S.EVENTS_FILE))
  os.makedirs(os.path.join(log, S.EVENTS_FILE))
  cut = [0, events.num_rows // 3, 2 * events.num_rows // 3, events.num_rows]
  for i in range(3):
    pq.write_table(events.slice(cut[i], cut[i + 1] - cut[i]),
                   os.path.join(log, S.EVENTS_FILE, f"part-{i:05d}.parquet"),
                   row_group_size=5)
  open(os.path.join(log, S.EVENTS_FILE, "_SUCCESS"), "w").close()
  return log, events


def _drain(src, max_rows):
  batches = []
  while (b := src.read(max_rows)) is not None:
    batches.append(b)
  return batches


def test_replays_every_row_in_log_order_side_tables_first(tmp_path):
  log = _example_log(tmp_path)
  events, side = tv._example()
  src = ReplaySource(log)
  batches = _drain(src, 5)
  assert [len(b) for b in batches] == [5, 5, 2]
  assert set(batches[0].side) == set(S.SIDE_TABLES)
  for name, table in side.items():
    assert batches[0].side[name].equals(table)
  assert all(b.side == {} and b.dead == [] for b in batches[1:])
  assert pa.concat_tables(b.events for b in batches).equals(events)
  assert [o for b in batches for o in b.offsets] == [str(i) for i in range(12)]
  assert src.position() == {"rows": 12, "side": True}
  assert src.read(5) is None


def test_parts_ties_included_keep_the_files_order(tmp_path):
  log, events = _random_log_in_parts(tmp_path)
  ts, xid = (events.column(c).to_numpy() for c in ("ts_ms", "exposure_id"))
  assert ((ts[1:] == ts[:-1]) & (xid[1:] == xid[:-1])).sum() > 10  # ties are there to keep
  batches = _drain(ReplaySource(log, batch_rows=7), None)
  assert all(len(b) == 7 for b in batches[:-1])
  assert pa.concat_tables(b.events for b in batches).equals(events)


def test_resume_after_seek_gives_exactly_the_remaining_rows(tmp_path):
  log, events = _random_log_in_parts(tmp_path)
  first = ReplaySource(log)
  got = [first.read(13), first.read(4)]
  pos = first.position()
  assert pos == {"rows": 17, "side": True}
  again = ReplaySource(log)
  again.seek(pos)
  rest = _drain(again, 50)
  assert all(b.side == {} for b in rest)  # delivered before the position: not again
  assert pa.concat_tables(b.events for b in got + rest).equals(events)
  assert [o for b in got + rest for o in b.offsets] == [str(i) for i in range(events.num_rows)]
  # A position before anything was delivered replays the side tables too.
  fresh = ReplaySource(log)
  fresh.seek({"rows": 0, "side": False})
  assert set(fresh.read(1).side) == set(S.SIDE_TABLES)


def test_chunked_reading_from_every_row_gives_the_rest_of_the_log(tmp_path):
  # Parts of 5-row groups read 3 rows at a time: seeks land in every part, group and chunk.
  log, events = _random_log_in_parts(tmp_path)
  n, third = events.num_rows, events.num_rows // 3  # parts start at 0, third, 2 * third
  rows = {0, 1, 4, 5, 6, 11, third - 1, third, third + 1, third + 5, 2 * third, n - 1, n}
  for row in sorted(rows):
    src = ReplaySource(log, chunk_rows=3)
    src.seek({"rows": row, "side": True})
    rest = _drain(src, 10)
    assert all(len(b) == 10 for b in rest[:-1])
    got = pa.concat_tables([b.events for b in rest]) if rest else events.slice(row, 0)
    assert got.equals(events.slice(row)), row
    assert [o for b in rest for o in b.offsets] == [str(i) for i in range(row, len(src))]


def test_hive_partition_folders_supply_their_column(tmp_path):
  # events.parquet/seq=K/domain=D/part.parquet: the files lack the domain column.
  log = _example_log(tmp_path)
  events, _ = tv._example()
  os.remove(os.path.join(log, S.EVENTS_FILE))
  for k, (start, stop) in enumerate([(0, 3), (3, 6), (6, 9), (9, 12)]):
    rows = events.slice(start, stop - start)
    folder = os.path.join(log, S.EVENTS_FILE, f"seq={k}", f"domain={rows['domain'][0]}")
    os.makedirs(folder)
    pq.write_table(rows.drop_columns(["domain"]), os.path.join(folder, "part.parquet"))
  src = ReplaySource(log, chunk_rows=2)
  src.seek({"rows": 4, "side": True})
  assert pa.concat_tables(b.events for b in _drain(src, 5)).equals(events.slice(4))


def test_bad_positions_and_arguments_are_refused_in_one_line(tmp_path):
  log = _example_log(tmp_path)
  src = ReplaySource(log)
  with pytest.raises(ValueError, match=r"seek to row 13, but the log has 12 event rows"):
    src.seek({"rows": 13, "side": True})
  with pytest.raises(ValueError, match=r"is not a replay position"):
    src.seek({"id": "1-0"})
  with pytest.raises(ValueError, match=r"speed=-1.0 must be >= 0"):
    ReplaySource(log, speed=-1.0)
  with pytest.raises(io.UnreadableTableError, match=r"events.parquet: missing file"):
    ReplaySource(str(tmp_path / "nowhere"))


class FakeClock:
  """A wall clock that moves only when slept on or advanced by the test."""

  def __init__(self):
    self.now, self.slept = 100.0, []

  def __call__(self):
    return self.now

  def sleep(self, s):
    self.slept.append(s)
    self.now += s


def test_speed_60_delivers_a_logged_minute_per_wall_second(tmp_path):
  # Example rows at logged ms 0, 500, 10000, 12000, 15000, 15000, 20000, 40000, 65000, ...
  log = _example_log(tmp_path)
  clock = FakeClock()
  src = ReplaySource(log, speed=60, clock=clock, sleep=clock.sleep)
  first = src.read(100, timeout_s=0)
  assert first.offsets == ["0"] and set(first.side) == set(S.SIDE_TABLES)  # the anchor
  assert src.read(100, timeout_s=0).offsets == []  # 500 logged ms = 8.3 wall ms: not yet
  clock.now += 0.2  # 12 logged seconds
  assert src.read(100, timeout_s=0).offsets == ["1", "2", "3"]
  # The next row (15 s) comes due 0.25 s after the anchor: a read waits for it and its tie.
  assert src.read(100, timeout_s=1.0).offsets == ["4", "5"]
  assert clock.slept == [pytest.approx(0.05)]
  # 20 s is 1/3 wall second in: a shorter timeout returns an empty batch after waiting it.
  assert src.read(100, timeout_s=0.01).offsets == []
  assert clock.slept[-1] == pytest.approx(0.01)
  assert src.read(1, timeout_s=1.0).offsets == ["6"]  # max_rows still caps a paced read
  # After a seek the pacing restarts from the next row (40 s): due at once.
  pos = src.position()
  again = ReplaySource(log, speed=60, clock=clock, sleep=clock.sleep)
  again.seek(pos)
  assert again.read(100, timeout_s=0).offsets == ["7"]
  clock.now += 25 / 60  # 65 s logged
  assert again.read(100, timeout_s=0).offsets == ["8"]
  assert again.read(100, timeout_s=10).offsets == ["9"]  # 70 s
  assert again.read(100, timeout_s=10).offsets == ["10", "11"]  # 85 s, a tie
  assert again.read(100, timeout_s=10) is None
  assert clock.slept == pytest.approx([0.05, 0.01, 20 / 60 - 0.26, 5 / 60, 15 / 60])


def test_speed_0_never_waits(tmp_path):
  clock = FakeClock()
  src = ReplaySource(_example_log(tmp_path), speed=0, clock=clock, sleep=clock.sleep)
  assert [len(b) for b in _drain(src, 100)] == [12]
  assert clock.slept == []


def test_offset_key_orders_offsets_as_delivered():
  assert sorted(["10", "9", "100"], key=offset_key) == ["9", "10", "100"]
  assert offset_key("1700000000000-0/3") == (1700000000000, 0, 3)
  assert offset_key("9-1/0") < offset_key("10-0/0")
  with pytest.raises(ValueError, match=r"offset 'x-1' is not integers joined by '-' or '/'"):
    offset_key("x-1")
