"""Nothing silent in the converters: one timestamp parser, ids kept or hashed but never merged,
nulls dropped and counted, and every bad value named by file, column, row and value."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcjax import convert
from mcjax.convert import sources, times

import test_convert as tc  # the tiny KuaiLive / KuaiLive-M3 folders

T = tc.T
ROOT = tc.ROOT


def _times(values, tz=None):
  at = sources.Where("click.csv", "timestamp", csv=True)
  return times.parse_times(pa.array(values), at, tz)


# ---------------------------------------------------------------------------- times

def test_epoch_unit_is_told_by_magnitude_and_reported():
  for scale, unit in ((1e-3, "s"), (1, "ms"), (1e3, "us"), (1e6, "ns")):
    ms, how = _times([int(T * scale), int((T + 5_000) * scale), None])
    assert ms.tolist() == [T, T + 5_000, sources.MISSING] and how == f"epoch {unit}"
  ms, how = _times([str(T // 1000), f"{(T + 5_000) / 1000:.3f}"])  # numbers in text, s
  assert ms.tolist() == [T, T + 5_000] and how == "epoch s"


def test_iso_times_need_a_zone_or_a_declared_tz():
  ms, how = _times(["2025-05-01T08:00:00+08:00", "2025-05-01 00:00:05Z", None])
  assert ms.tolist() == [T, T + 5_000, sources.MISSING] and how == "ISO 8601 with zone"
  ms, how = _times(["2025-05-01 08:00", "2025-05-01T08:00:05"], tz="Asia/Shanghai")
  assert ms.tolist() == [T, T + 5_000] and how == "ISO 8601 local in Asia/Shanghai"
  ms, how = _times([str(T), "2025-05-01T00:00:05Z"])
  assert ms.tolist() == [T, T + 5_000] and how == "epoch ms + ISO 8601 with zone"


@pytest.mark.parametrize("values,row,words", [
    ([str(T), "\\N"], "line 3", ["'\\N'", "not a time"]),
    (["yesterday"], "line 2", ["'yesterday'", "not a time"]),
    ([str(T), "2025-05-01 10:00"], "line 3", ["'2025-05-01 10:00'", "without a zone", "--tz"]),
    ([str(T), str(T), str(T // 1000)], "line 4", [str(T // 1000), "not epoch ms"]),
    ([str(T), "0"], "line 3", ["0", "not epoch ms", "placeholder"]),
    (["-5"], "line 2", ["'-5'", "not a time"]),
    (["2025-02-30T00:00:00Z"], "line 2", ["'2025-02-30T00:00:00Z'", "not a valid time"]),
])
def test_bad_times_name_file_column_row_and_value(values, row, words):
  with pytest.raises(sources.SourceError) as e:
    _times(values)
  msg = str(e.value)
  assert msg.startswith(f"click.csv: column 'timestamp', {row}: "), msg
  for w in words:
    assert w in msg, msg
  assert "\n" not in msg


def test_parquet_times_rows_count_from_zero_and_naive_timestamps_need_tz():
  at = sources.Where("photo_play.parquet", "enter_timestamp")
  with pytest.raises(sources.SourceError, match=r"photo_play.parquet: column 'enter_timestamp', "
                     r"row 1: -1"):
    times.parse_times(pa.array([T, -1]), at)
  naive = pa.array([T], pa.timestamp("ms"))
  with pytest.raises(sources.SourceError, match="has no time zone.*--tz"):
    times.parse_times(naive, at)
  assert times.parse_times(naive, at, "UTC")[0].tolist() == [T]
  zoned = pa.array([T], pa.timestamp("ms", "Asia/Shanghai"))
  assert times.parse_times(zoned, at)[0].tolist() == [T]
  with pytest.raises(sources.SourceError, match="unknown time zone"):
    times.check_tz("Mars/Olympus")


# ---------------------------------------------------------------------------- ids

def test_decimal_ids_keep_their_value_up_to_int64_and_others_are_hashed():
  got = sources.ids(pa.array([" 17 ", "007", "17.0", str(2**63 - 1), None, ""]))
  assert got.tolist() == [17, 7, 17, 2**63 - 1, sources.MISSING, sources.MISSING]
  big = sources.ids(pa.array([str(2**63), "99999999999999999999", "abc", "-5"]))
  assert np.all(big >= 0) and len(set(big.tolist())) == 4
  # the same id given as text, as uint64 or as int64 maps to the same value
  assert sources.ids(pa.array([2**63], pa.uint64()))[0] == big[0]
  assert sources.ids(pa.array([-5], pa.int64()))[0] == big[3]
  assert sources.ids(pa.array([12.0, None]))[:1].tolist() == [12]


@pytest.mark.parametrize("value", [1.5, float("nan"), 2.0**60])
def test_float_ids_that_lost_or_never_had_digits_are_refused(value):
  at = sources.Where("live_show.parquet", "user_id")
  with pytest.raises(sources.SourceError, match=r"live_show.parquet: column 'user_id', row 1: "
                     r".*a float id must be a whole number below 2\^53"):
    sources.ids(pa.array([3.0, value]), at)


def test_null_marker_id_is_refused():
  with pytest.raises(sources.SourceError, match=r"user.csv: column 'user_id', line 3: '\\N': "
                     "a null marker"):
    sources.ids(pa.array(["1", "\\N"]), sources.Where("user.csv", "user_id", csv=True))


def test_hash_collision_is_refused(monkeypatch):
  monkeypatch.setattr(sources, "fnv64", lambda strings: np.full(len(strings), 5, np.int64))
  with pytest.raises(sources.SourceError, match="both map to 5"):
    sources.ids(pa.array(["a", "b"]))
  with pytest.raises(sources.SourceError, match="both map to 5"):
    sources.ids(pa.array(["5", "a"]))  # a hashed id may not land on a kept number either


def test_huge_csv_id_neither_floats_nor_drops_nor_merges_the_column(tmp_path):
  src = tc._kuailive(tmp_path)
  click = (tmp_path / "click.csv").read_text().splitlines()
  click.append(f"99999999999999999999,100,10,{T + 300_000},1000")
  click.append(f"1000000000000000001,100,10,{T + 400_000},1000")
  (tmp_path / "click.csv").write_text("\n".join(click) + "\n")
  events, side, stats = convert.convert_tables("kuailive", src)
  users = set(events.column("user_id").to_pylist())
  assert {1, 2, 1000000000000000001} <= users and len(users) == 4  # nothing merged
  assert stats.rows_read["click.csv"] == 5
  assert not any(v for k, v in stats.dropped.items() if k.startswith("click.csv"))


# ---------------------------------------------------------------------------- converters

def _set_csv_cell(path, line, column, value):
  """Replaces one cell (``line`` counted from 1, header = 1) of a small CSV."""
  rows = [r.split(",") for r in path.read_text().splitlines()]
  rows[line - 1][rows[0].index(column)] = value
  path.write_text("\n".join(",".join(r) for r in rows) + "\n")


@pytest.mark.parametrize("value,words", [
    ("\\N", ["'\\N'", "not a time"]),
    ("yesterday", ["'yesterday'"]),
    ("2025-05-01 10:00", ["without a zone"]),
])
def test_kuailive_bad_timestamp_is_named(tmp_path, value, words):
  src = tc._kuailive(tmp_path)
  _set_csv_cell(tmp_path / "click.csv", 3, "timestamp", value)
  with pytest.raises(sources.SourceError) as e:
    convert.convert_tables("kuailive", src)
  msg = str(e.value)
  assert msg.startswith("click.csv: column 'timestamp', line 3: "), msg
  for w in words:
    assert w in msg, msg


def test_kuailive_local_times_with_tz_and_units_reported(tmp_path):
  src = tc._kuailive(tmp_path)
  _set_csv_cell(tmp_path / "click.csv", 2, "timestamp", "2025-05-01 08:00:00")  # = T in +08
  events, _, stats = convert.convert_tables("kuailive", src, tz="+08:00")
  assert events.column("ts_ms")[0].as_py() == T
  assert stats.time_units["click.csv:timestamp"] == "epoch ms + ISO 8601 local in +08:00"
  assert stats.time_units["negative.csv:timestamp"] == "epoch ms"
  assert "time columns read as: " in stats.summary()


def test_kuailive_null_times_and_ids_are_dropped_and_counted(tmp_path):
  src = tc._kuailive(tmp_path)
  _set_csv_cell(tmp_path / "negative.csv", 2, "timestamp", "")
  _set_csv_cell(tmp_path / "like.csv", 3, "user_id", "")
  _, _, stats = convert.convert_tables("kuailive", src)
  assert stats.dropped["negative.csv: null timestamp"] == 1
  assert stats.dropped["like.csv: null user_id"] == 1
  assert "negative.csv: null timestamp=1" in stats.summary()


def test_kuailive_m3_bad_parquet_time_is_named(tmp_path):
  src = tc._m3(tmp_path)
  play = pq.read_table(tmp_path / "photo_play.parquet")
  i = play.column_names.index("leave_timestamp")
  bad = play.set_column(i, "leave_timestamp", pa.array(["2025-05-01T00:01:15Z", "yesterday"]))
  pq.write_table(bad, tmp_path / "photo_play.parquet")
  with pytest.raises(sources.SourceError, match=r"photo_play.parquet: column 'leave_timestamp', "
                     r"row 1: 'yesterday': not a time"):
    convert.convert_tables("kuailive_m3", src)
  naive = play.set_column(i, "leave_timestamp", pa.array([T + 75_000, T + 13_000],
                                                         pa.timestamp("ms")))
  pq.write_table(naive, tmp_path / "photo_play.parquet")
  with pytest.raises(sources.SourceError, match="leave_timestamp'.*has no time zone"):
    convert.convert_tables("kuailive_m3", src)
  events, _, stats = convert.convert_tables("kuailive_m3", src, tz="UTC")
  assert events.num_rows == 20
  assert stats.time_units["photo_play.parquet:leave_timestamp"].endswith("local in UTC")


def test_kuailive_m3_string_times_are_no_longer_hashed(tmp_path):
  src = tc._m3(tmp_path)
  _set_csv_cell(tmp_path / "live_like.csv", 2, "like_timestamp", "2025-05-01T00:00:20Z")
  events, _, stats = convert.convert_tables("kuailive_m3", src)
  assert tc._rows(events)[8] == (20_000, 0, "like", 0.0)  # placed in its watch, not dropped
  assert stats.dropped["live_like.csv: no open watch of the same (user, live)"] == 1


def test_non_utf8_csv_cell_names_file_column_and_line(tmp_path):
  src = tc._kuailive(tmp_path)
  data = (tmp_path / "click.csv").read_bytes().replace(b"\n2,101,", b"\n2\xff\xfe,101,", 1)
  (tmp_path / "click.csv").write_bytes(data)
  with pytest.raises(sources.SourceError, match=r"click.csv: column 'user_id', line 3: "
                     r".*not UTF-8"):
    convert.convert_tables("kuailive", src)
  (tmp_path / "click.csv").write_bytes(data.replace(b"\xff\xfe", b""))  # repaired
  room = (tmp_path / "room.csv").read_bytes().replace(b"Music", b"M\xe9sica")  # Latin-1
  (tmp_path / "room.csv").write_bytes(room)
  with pytest.raises(sources.SourceError, match=r"room.csv: column 'live_content_category', "
                     r"line 4: b'M\\xe9sica': bytes that are not UTF-8"):
    convert.convert_tables("kuailive", src)


def test_launcher_prints_one_line_for_a_bad_time_and_tz_flag_works(tmp_path):
  src = tc._kuailive(tc._sub(tmp_path, "src"))
  _set_csv_cell(tmp_path / "src" / "gift.csv", 2, "timestamp", "2025-05-01 08:00:50")
  out = tmp_path / "log"
  cmd = [sys.executable, "-m", "launch.convert", "--format=kuailive", f"--src={src}",
         f"--out={out}"]
  bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 1 and not out.exists()
  assert bad.stderr.strip().splitlines() == [
      "ERROR: gift.csv: column 'timestamp', line 2: '2025-05-01 08:00:50': a local time "
      "without a zone: add one (Z, +08:00) or declare the zone of the file's local times with "
      "--tz (e.g. --tz=Asia/Shanghai)"]
  ok = subprocess.run(cmd + ["--tz=Asia/Shanghai"], cwd=ROOT, capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  assert "gift.csv:timestamp=epoch ms + ISO 8601 local in Asia/Shanghai" in ok.stdout
  assert "click.csv:timestamp=epoch ms" in ok.stdout
  assert os.path.isfile(out / "events.parquet")
