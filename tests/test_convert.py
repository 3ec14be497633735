"""Tests of the KuaiLive and KuaiLive-M3 converters on tiny files in the published layouts."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcjax import convert
from mcjax.convert import sources
from mcjax.eventlog import io
from mcjax.eventlog import validate as V

T = 1_746_057_600_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _csv(folder, name, header, rows):
  lines = [header] + [",".join("" if v is None else str(v) for v in r) for r in rows]
  (folder / name).write_text("\n".join(lines) + "\n")


def _kuailive(folder, click_header="user_id,live_id,streamer_id,timestamp,watch_live_time"):
  _csv(folder, "user.csv", "user_id,age,gender,country,device_brand,fans_num,"
       "accu_watch_live_cnt,is_live_streamer", [
           (1, "18-23", "M", "CN", "x", "100-500", 7, 0), (2, "50+", "F", "CN", "y", "0", 0, 0)])
  _csv(folder, "streamer.csv", "streamer_id,gender,age,fans_user_num,accu_live_cnt", [
      (10, "M", "24-30", 1000, 3), (11, "F", "31-40", 0, 1)])
  _csv(folder, "room.csv", "p_date,live_id,streamer_id,live_type,start_timestamp,end_timestamp,"
       "live_content_category,live_name_id", [
           (20250501, 100, 10, 1, T - 3_600_000, T + 1_000_000, "Game", 5),
           (20250502, 100, 10, 1, T - 3_600_000, T + 90_000_000, "Game", 5),
           (20250501, 101, 11, 1, T - 1_000, None, "Music", 6)])
  _csv(folder, "click.csv", click_header, [
      (1, 100, 10, T, 60_000), (2, 101, 11, T + 5_000, 30_000), (1, 100, 10, T + 100_000, 10_000)])
  action = "user_id,live_id,streamer_id,timestamp"
  _csv(folder, "negative.csv", action, [(2, 100, 10, T + 2_000)])
  _csv(folder, "like.csv", action, [(1, 100, 10, T + 30_000), (2, 100, 10, T + 30_000),
                                    (1, 100, 10, T + 105_000)])
  _csv(folder, "comment.csv", action, [(2, 101, 11, T + 35_000)])
  _csv(folder, "gift.csv", action + ",gift_price", [(1, 100, 10, T + 50_000, 9.9),
                                                    (1, 100, 10, T + 200_000, 1)])
  return str(folder)


def _sub(folder, name):
  """A new subfolder: sources and outputs must not overlap, so sources go in their own."""
  (folder / name).mkdir()
  return folder / name


def _rows(events):
  """(ts - T, exposure_id, event, value) per row."""
  return list(zip((events.column("ts_ms").to_numpy() - T).tolist(),
                  events.column("exposure_id").to_pylist(), events.column("event").to_pylist(),
                  events.column("value").to_pylist()))


def test_kuailive_events_and_side_tables(tmp_path):
  src = _kuailive(tmp_path)
  events, side, stats = convert.convert_tables("kuailive", src)
  assert _rows(events) == [
      (0, 0, "exposure", 0.0), (0, 0, "click", 0.0), (2_000, 1, "exposure", 0.0),
      (5_000, 2, "exposure", 0.0), (5_000, 2, "click", 0.0), (30_000, 0, "like", 0.0),
      (35_000, 2, "comment", 0.0), (35_000, 2, "watch_end", 30.0), (50_000, 0, "gift", 9.9),
      (60_000, 0, "watch_end", 60.0), (100_000, 3, "exposure", 0.0), (100_000, 3, "click", 0.0),
      (105_000, 3, "like", 0.0), (110_000, 3, "watch_end", 10.0)]
  assert events.column("user_id").to_pylist()[:4] == [1, 1, 2, 2]
  assert stats.dropped["like.csv: no open watch of the same (user, live)"] == 1
  assert stats.dropped["gift.csv: no open watch of the same (user, live)"] == 1
  assert stats.rows_read["click.csv"] == 3 and stats.rows_read["room.csv"] == 3
  lives = side["lives.parquet"].sort_by("live_id").to_pydict()
  assert lives["live_id"] == [100, 101]
  assert lives["start_ms"] == [T - 3_600_000, T - 1_000]
  assert lives["end_ms"] == [T + 90_000_000, T + 35_000]  # merged days; null -> last event
  assert lives["category"][0] != lives["category"][1] and min(lives["category"]) > 0
  users = side["users.parquet"].sort_by("user_id").to_pydict()
  assert users["age_bucket"] == [2, 6] and users["gender"] == [1, 2]
  assert users["activity_bucket"] == [3, 0]
  authors = side["authors.parquet"].sort_by("author_id").to_pydict()
  assert authors["fans_bucket"] == [9, 0] and authors["category"] == lives["category"]
  stats_log = V.validate_tables(events, side)
  assert stats_log.exposures == 4 and stats_log.events == {
      "exposure": 4, "click": 3, "watch_end": 3, "like": 2, "comment": 1, "gift": 1}


def test_kuailive_launcher_writes_a_valid_log(tmp_path):
  src = _kuailive(_sub(tmp_path, "src"))
  out = tmp_path / "log"
  cmd = [sys.executable, "-m", "launch.convert", "--format=kuailive", f"--src={src}",
         f"--out={out}"]
  run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "dropped rows" in run.stdout and "exposures 4" in run.stdout
  assert V.validate_log(str(out)).rows == 14
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert again.returncode == 1 and "already exists" in again.stderr


def test_missing_column_or_file_names_file_and_column(tmp_path):
  src = _kuailive(_sub(tmp_path, "src"), click_header="user_id,live_id,streamer_id,timestamp,watch_time")
  with pytest.raises(sources.SourceError, match=r"click.csv: missing column\(s\) 'watch_live_time'"):
    convert.convert_to_log("kuailive", src, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  good = tmp_path / "good"
  good.mkdir()
  src = _kuailive(good)
  os.remove(good / "gift.csv")
  with pytest.raises(sources.SourceError, match="gift.csv: missing file"):
    convert.convert_tables("kuailive", src)


def _m3(folder, comment_id="live_stream_id"):
  _csv(folder, "user_id_set.csv", "user_id", [(1,), (2,), (3,)])
  _csv(folder, "author_profile.csv",
       "author_id,is_photo_author,is_live_author,gender,age_segment,fans_user_num",
       [(10, 1, 1, "M", "18-23", 1023), (11, 0, 1, "F", None, 5)])
  _csv(folder, "live_interaction.csv",
       "user_id,author_id,live_id,live_play_start_timestamp,live_play_end_timestamp,p_date,"
       "live_source_category,enter_live_action,is_auto_play,is_follow_enter,is_follow_leave,"
       "play_duration,like_cnt,comment_cnt,send_gift_cnt,send_gift_num,follow_author_cnt,"
       "cancel_follow_author_cnt,share_cnt,report_live_cnt", [
           (1, 10, 100, T, T + 60_000, 20250501, "a", "b", 0, 0, 1, 60_000, 3, 1, 2, 10, 1, 0, 0, 0),
           (2, 11, 101, T + 10_000, None, 20250501, "a", "b", 1, 0, 0, 5_000, 0, 0, 0, 0, 0, 0, 0, 0)])
  _csv(folder, "live_like.csv", "user_id,live_id,like_timestamp",
       [(1, 100, T + 20_000), (3, 100, T + 20_000)])
  _csv(folder, "live_comment.csv", f"{comment_id},user_id,author_id,content,comment_ts",
       [(100, 1, 10, "hi", T + 30_000)])
  pq.write_table(pa.table({"live_id": [100], "user_id": [3], "author_id": [10],
                           "show_timestamp": [T + 1_000]}), folder / "live_show.parquet")
  pq.write_table(pa.table({
      "live_id": [100, 101], "author_id": [10, 11], "live_name": ["x", "y"],
      "start_timestamp": [T - 1_000, T + 5_000], "end_timestamp": pa.array([None, T + 99_000],
                                                                           pa.int64()),
      "live_duration": [None, 94_000]}), folder / "live_room_meta.parquet")
  pq.write_table(pa.table({
      "user_id": [1, 2], "photo_id": [200, 201], "author_id": [10, 11],
      "enter_timestamp": [T + 70_000, T + 3_000], "leave_timestamp": [T + 75_000, T + 13_000],
      "enter_play_type": [1, 1], "is_complete_play": [False, True], "like_status_type": [1, 0],
      "is_follow_before_play": [0, 1], "is_follow_after_play": [1, 1]}),
      folder / "photo_play.parquet")
  pq.write_table(pa.table({
      "photo_id": [200, 201], "author_id": [10, 11], "duration": [20_000, 8_000],
      "display_type": [0, 0], "cover_title": ["a", "b"], "video_texts": ["", ""]}),
      folder / "photo_meta.parquet")
  _csv(folder, "photo_tag.csv", "photo_id,first_level_category_name,second_level_category_name,"
       "third_level_category_name,fourth_level_category_name",
       [(200, "Game", "Moba", "x", None), (201, "Music", "Pop", None, None)])
  return str(folder)


def test_kuailive_m3_events_and_side_tables(tmp_path):
  events, side, stats = convert.convert_tables("kuailive_m3", _m3(tmp_path))
  assert _rows(events) == [
      (0, 0, "exposure", 0.0), (0, 0, "click", 0.0), (1_000, 1, "exposure", 0.0),
      (3_000, 2, "exposure", 0.0), (10_000, 3, "exposure", 0.0), (10_000, 3, "click", 0.0),
      (13_000, 2, "watch_end", 10.0), (15_000, 3, "watch_end", 5.0), (20_000, 0, "like", 0.0),
      (30_000, 0, "comment", 0.0), (60_000, 0, "like", 0.0), (60_000, 0, "like", 0.0),
      (60_000, 0, "gift", 5.0), (60_000, 0, "gift", 5.0), (60_000, 0, "follow", 0.0),
      (60_000, 0, "watch_end", 60.0), (70_000, 4, "exposure", 0.0), (75_000, 4, "like", 0.0),
      (75_000, 4, "follow", 0.0), (75_000, 4, "watch_end", 5.0)]
  dom = events.column("domain").to_pylist()
  assert dom[3] == "short_video" and dom[4] == "live"
  # Plays: 10 s of the 8 s video 201 (a complete play, not liked) and 5 s of the 20 s video 200
  # (liked: a like at leave_timestamp); play times in seconds, whatever the duration.
  assert [dom[i] for i in (6, 17, 18, 19)] == ["short_video"] * 4
  assert stats.dropped["live_like.csv: no open watch of the same (user, live)"] == 1
  lives = side["lives.parquet"].sort_by("live_id").to_pydict()
  assert lives["end_ms"] == [T + 60_000, T + 99_000]  # null end -> last event of the room
  videos = side["videos.parquet"].sort_by("video_id").to_pydict()
  assert videos["duration_s"] == [20.0, 8.0] and len(set(videos["category"])) == 2
  authors = side["authors.parquet"].sort_by("author_id").to_pydict()
  assert authors["fans_bucket"] == [10, 2] and authors["is_video_author"] == [True, True]
  assert authors["category"] == videos["category"]
  assert side["users.parquet"].num_rows == 3
  assert V.validate_tables(events, side).exposures == 5


def test_kuailive_m3_writes_log_and_names_missing_column(tmp_path):
  out = str(tmp_path / "log")
  stats, log_stats = convert.convert_to_log("kuailive_m3", _m3(_sub(tmp_path, "src")), out)
  assert log_stats.domains == {"live": 14, "short_video": 6}
  assert V.validate_log(out).rows == 20 and io.read_events(out).num_rows == 20
  bad = tmp_path / "bad"
  bad.mkdir()
  with pytest.raises(sources.SourceError,
                     match=r"live_comment.csv: missing column\(s\) 'live_stream_id'"):
    convert.convert_tables("kuailive_m3", _m3(bad, comment_id="live_id"))


def test_string_ids_hash_deterministically():
  a = sources.ids(pa.array(["abc", "17", None]))
  b = sources.ids(pa.chunked_array([["abc"], ["17"]]))
  assert a[0] == b[0] and a[0] >= 0 and a[1] == 17 and a[2] == sources.MISSING
  assert np.all(sources.name_hash(pa.array(["Game", "Game", None])) == [
      sources.name_hash(pa.array(["Game"]))[0]] * 2 + [0])
