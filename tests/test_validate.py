"""Tests of the event-log validator: the example log passes, each broken rule is named."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcjax.eventlog import io
from mcjax.eventlog import schema as S
from mcjax.eventlog import validate as V

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "data", "example")


def _example():
  spec = importlib.util.spec_from_file_location(
      "make_example", os.path.join(EXAMPLE, "make_example.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.example_tables()


def _set(table, name, row, value):
  """Returns ``table`` with one cell replaced (keeps the column's type)."""
  col = table.column(name).to_pylist()
  col[row] = value
  i = table.column_names.index(name)
  return table.set_column(i, table.schema.field(i), pa.array(col, table.schema.field(i).type))


def _raises(events, *words, side=None):
  side = side if side is not None else _example()[1]
  with pytest.raises(V.LogValidationError) as e:
    V.validate_tables(events, side)
  msg = str(e.value)
  for w in words:
    assert w in msg, msg
  return msg


def test_committed_example_log_validates():
  stats = V.validate_log(EXAMPLE)
  assert stats.rows == 12 and stats.exposures == 4 and stats.users == 2
  assert stats.events["exposure"] == 4 and stats.domain_events["live/gift"] == 1
  # Short-video plays end with a watch_end (seconds played) and need no click.
  assert stats.domain_events["short_video/watch_end"] == 2
  assert stats.domain_events["live/watch_end"] == 1
  assert stats.max_ts_ms - stats.min_ts_ms == 85_000
  events, side = _example()
  assert pq.read_table(os.path.join(EXAMPLE, S.EVENTS_FILE)).equals(events)


def test_launcher_prints_stats_or_error_and_exit_code(tmp_path):
  ok = subprocess.run([sys.executable, "-m", "launch.validate", f"--log={EXAMPLE}"],
                      cwd=ROOT, capture_output=True, text=True)
  assert ok.returncode == 0 and "exposures 4" in ok.stdout
  bad = subprocess.run([sys.executable, "-m", "launch.validate", f"--log={tmp_path}/none"],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 1 and "does not exist" in bad.stderr


@pytest.mark.parametrize("row,column,value,words", [
    (1, "domain", "radio", ["column 'domain'", "unknown domain", "row 1"]),
    (1, "event", "share", ["unknown event", "row 1"]),
    (5, "event", "play_end", ["unknown event", "row 5"]),  # replaced by watch_end
    (5, "value", -0.5, ["negative watch_end value", "row 5", "domain='short_video'"]),
    (4, "event", "watch_end", ["several 'watch_end' events", "row 4"]),
    (6, "domain", "short_video", ["domain differs", "row 6"]),
    (7, "event", "comment", ["comment must have value 0"]),
    (7, "value", 0.0, ["gift value must be > 0", "row 7", "event='gift'"]),
    (7, "value", -1.0, ["gift value must be > 0"]),
    (8, "value", -3.0, ["negative watch_end value", "row 8"]),
    (8, "value", float("nan"), ["NaN or infinite"]),
    (5, "value", float("inf"), ["NaN or infinite"]),
    (6, "user_id", 2, ["column 'user_id'", "user_id differs within one exposure_id", "row 6"]),
    (6, "item_id", 101, ["item_id differs"]),
    (6, "author_id", 11, ["author_id differs"]),
    (6, "user_id", -4, ["column 'user_id'", "negative value"]),
    (6, "exposure_id", -1, ["column 'exposure_id'", "negative value"]),
    (2, "event", "click", ["exposure without an 'exposure' event", "row 2"]),
    (1, "event", "exposure", ["several 'exposure' events", "row 0"]),
    (6, "event", "click", ["several 'click' events"]),
    (1, "event", "like", ["watch_end without a click"]),
    (1, "ts_ms", None, ["column 'ts_ms'", "null values", "row 1"]),
])
def test_rejects_bad_cell(row, column, value, words):
  events, _ = _example()
  _raises(_set(events, column, row, value), "events.parquet", *words)


def test_rejects_event_not_allowed_in_domain():
  events, _ = _example()
  # A gift on a short video (rows 9..11 are exposure 3, a short video).
  msg = _raises(_set(_set(events, "event", 10, "gift"), "value", 10, 2.0),
                "event 'gift' not allowed in domain 'short_video'", "row 10")
  assert "item_id=200" in msg


def test_rejects_out_of_order_timestamps():
  events, _ = _example()
  t0 = events.column("ts_ms")[0].as_py()
  # watch_end before its click (same exposure, still sorted globally: move it to row 0's time)
  late = _set(events, "ts_ms", 1, t0 + 70_000)
  _raises(late, "watch_end before its click")
  # an event before its exposure's exposure event
  _raises(_set(events, "ts_ms", 4, t0 + 11_000), "event before its exposure's 'exposure' event",
          "row 4")
  # like outside the watch span
  _raises(_set(events, "ts_ms", 7, t0 + 66_000), "after its watch_end")
  # global order
  _raises(_set(events, "ts_ms", 2, t0 + 13_000), "not sorted by (ts_ms, exposure_id)", "row 3")
  # the exposure row is not first at a tie (a follow at the exposure's time, listed before it)
  swapped = _set(events, "ts_ms", 4, t0 + 12_000).take([0, 1, 2, 4, 3, 5, 6, 7, 8, 9, 10, 11])
  _raises(swapped, "first row is not its 'exposure' event", "row 3")


def test_types_allow_lossless_widening_only():
  events, side = _example()
  i = events.column_names.index("user_id")
  narrow = events.set_column(i, "user_id", events.column("user_id").cast(pa.int32()))
  assert V.validate_tables(narrow, side).rows == 12
  i = events.column_names.index("ts_ms")
  for typ in (pa.float64(), pa.string(), pa.uint64()):
    bad = events.set_column(i, "ts_ms", events.column("ts_ms").cast(typ))
    _raises(bad, "column 'ts_ms'", f"wrong type {typ}")
  _raises(events.drop_columns(["value"]), "column 'value'", "missing column")


def test_side_tables_and_live_ids():
  events, side = _example()
  lives = side["lives.parquet"]
  _raises(events, "lives.parquet", "live item_id missing from lives.parquet", "row 0",
          side={**side, "lives.parquet": _set(lives, "live_id", 0, 999)})
  _raises(events, "lives.parquet", "end_ms before start_ms",
          side={**side, "lives.parquet": _set(lives, "end_ms", 0, 0)})
  users = side["users.parquet"]
  _raises(events, "users.parquet", "column 'user_id'", "duplicate key", "row 1",
          side={**side, "users.parquet": _set(users, "user_id", 1, 1)})
  _raises(events, "videos.parquet", "missing column",
          side={**side, "videos.parquet": side["videos.parquet"].drop_columns(["tag"])})
  _raises(events, "authors.parquet", "missing side table",
          side={k: v for k, v in side.items() if k != "authors.parquet"})


def _copy_log(tmp_path):
  events, side = _example()
  return io.write_log(str(tmp_path / "mylog"), events, side)


def test_log_folder_missing_and_corrupt_files(tmp_path):
  log = _copy_log(tmp_path)
  assert V.validate_log(log).exposures == 4
  os.remove(os.path.join(log, "videos.parquet"))
  with pytest.raises(V.LogValidationError, match=r"mylog/videos.parquet: missing file"):
    V.validate_log(log)
  log = io.write_log(str(tmp_path / "mylog"), *_example(), overwrite=True)
  os.remove(os.path.join(log, S.EVENTS_FILE))
  with pytest.raises(V.LogValidationError, match=r"mylog/events.parquet: missing file"):
    V.validate_log(log)
  with open(os.path.join(log, S.EVENTS_FILE), "wb") as f:
    f.write(b"PAR1 this is not parquet")
  with pytest.raises(V.LogValidationError, match=r"mylog/events.parquet: unreadable Parquet"):
    V.validate_log(log)


def test_log_folder_reports_file_column_and_row(tmp_path):
  events, side = _example()
  log = str(tmp_path / "mylog")
  io.write_log(log, events, side)
  bad = _set(events, "value", 8, -1.0)
  pq.write_table(bad, os.path.join(log, S.EVENTS_FILE))
  with pytest.raises(V.LogValidationError) as e:
    V.validate_log(log)
  msg = str(e.value)
  assert msg.startswith("mylog/events.parquet: column 'value': negative watch_end value")
  assert "row 8" in msg and "value=-1.0" in msg and "event='watch_end'" in msg
  assert np.array_equal(pq.read_table(os.path.join(log, S.EVENTS_FILE)).column("value"),
                        bad.column("value"))
