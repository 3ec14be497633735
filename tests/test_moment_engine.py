"""Moment engine API: log folders and in-memory tables, chunked building, input errors."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from mcjax.eventlog import io
from mcjax.moment import MomentConfig
from mcjax.moment.engine import build_samples
from mcjax.moment.engine import SampleBuilder
from mcjax.moment.synth import EPOCH_MS, random_log, tables_from_events
from mcjax.contract import schema as SS


@pytest.fixture(scope="module")
def tables():
  return random_log(200, users=15, lives=3, hours=0.5, seed=5)


def _assert_tables_equal(a, b):
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_folder_and_mapping_inputs_agree(tables, tmp_path):
  side = {"users.parquet": tables.users, "authors.parquet": tables.authors,
          "lives.parquet": tables.lives, "videos.parquet": tables.videos}
  folder = io.write_log(str(tmp_path / "log"), tables.events, side)
  cfg = MomentConfig(features_at="sample")
  a = build_samples(folder, cfg)
  b = build_samples({"events.parquet": tables.events, **side}, cfg)
  c = build_samples(tables, cfg)
  for split in ("train", "eval"):
    _assert_tables_equal(a[split], b[split])
    _assert_tables_equal(a[split], c[split])
  train = a["train"]
  assert set(train) == {f.name for f in SS.FIELDS} | {"sv_offsets", "lv_offsets"}
  for f in SS.FIELDS:
    assert train[f.name].dtype == f.dtype, f.name
  n = len(train["kind"])
  assert train["crowd"].shape == (n, len(SS.CROWD_FEATURES))
  assert train["sv_offsets"][-1] == len(train["sv_item"]) and len(train["sv_offsets"]) == n + 1
  assert np.diff(train["sv_offsets"]).max() <= cfg.sv_hist_len
  key = np.stack([train["sample_ts_ms"], train["exposure_id"], train["kind"]])
  assert (np.lexsort(key[::-1]) == np.arange(n)).all()


def test_chunks_concatenate_to_the_whole(tables):
  cfg = MomentConfig()
  whole = build_samples(tables, cfg)
  builder = SampleBuilder(tables, cfg)
  for split in ("train", "eval"):
    chunks = list(builder.tables(split, chunk_rows=37))
    assert len(chunks) == -(-builder.num_rows(split) // 37)
    joined = {}
    for name in whole[split]:
      if name in SS.OFFSETS.values():
        ends = np.cumsum([c[name][-1] for c in chunks])
        joined[name] = np.concatenate(
            [[0]] + [c[name][1:] + (ends[i - 1] if i else 0) for i, c in enumerate(chunks)])
      else:
        joined[name] = np.concatenate([c[name] for c in chunks])
    _assert_tables_equal(joined, whole[split])


def test_input_errors_name_the_problem(tables):
  with pytest.raises(ValueError, match="unknown log table 'clicks'"):
    build_samples({"clicks": tables.events}, MomentConfig())
  with pytest.raises(ValueError, match=r"\['videos'\] not given"):
    build_samples({"events": tables.events, "users": tables.users, "authors": tables.authors,
                   "lives": tables.lives}, MomentConfig())
  with pytest.raises(FileNotFoundError, match="no_such_log"):
    build_samples("no_such_log", MomentConfig())
  bad = tables.events.set_column(6, "event", pa.array(["tap"] * tables.events.num_rows))
  with pytest.raises(ValueError, match=r"events.parquet: unknown event value\(s\) \['tap'\]"):
    build_samples(dataclasses.replace(tables, events=bad), MomentConfig())
  with pytest.raises(ValueError, match="users.parquet: missing column"):
    build_samples(dataclasses.replace(tables, users=tables.users.drop(["gender"])),
                  MomentConfig())
  with pytest.raises(ValueError, match="chunk_rows"):
    next(SampleBuilder(tables, MomentConfig()).tables("train", chunk_rows=0))


def test_ids_missing_from_side_tables_get_minus_one(tables):
  partial = dataclasses.replace(tables, lives=tables.lives.slice(0, 0),
                                videos=tables.videos.slice(0, 0),
                                users=tables.users.slice(0, 1))
  out = build_samples(partial, MomentConfig())
  ev, stats = out["eval"], out["stats"]
  assert (ev["live_category"] == -1).all() and (ev["sv_category"] == -1).all()
  assert (ev["sv_tag"] == -1).all()
  known_user = tables.users["user_id"][0].as_py()
  np.testing.assert_array_equal(ev["user_age"] == -1, ev["user_id"] != known_user)
  assert stats["unknown_lives"] == 200 and stats["unknown_videos"] > 0
  assert stats["sv_plays_without_duration"] == stats["unknown_videos"]
  assert (ev["sv_progress"] == 0).all()
  # Without lives.parquet a live starts at its first exposure in the log.
  age = ev["crowd"][:, SS.CROWD_INDEX["live_age_s"]]
  assert age.min() == 0.0 and (age >= 0).all()


def test_short_video_progress_is_seconds_played_over_duration():
  def ev(t_s, xid, domain, item, event, value=0.0):
    return (EPOCH_MS + int(t_s * 1000), 1, xid, domain, item, 9, event, value)
  tables = tables_from_events([
      ev(0, 1, "short_video", 500, "exposure"), ev(6, 1, "short_video", 500, "watch_end", 6.0),
      ev(10, 2, "short_video", 501, "exposure"), ev(14, 2, "short_video", 501, "watch_end", 4.0),
      ev(20, 3, "short_video", 502, "exposure"), ev(23, 3, "short_video", 502, "watch_end", 3.0),
      ev(60, 4, "live", 100, "exposure")])
  # Video 500 lasts 12 s, 501 has no known duration (0 s), 502 is missing from videos.parquet.
  videos = tables.videos.filter(pa.array([v != 502 for v in tables.videos["video_id"].to_pylist()]))
  videos = videos.set_column(4, "duration_s", pa.array([12.0, 0.0], pa.float32()))
  out = build_samples(dataclasses.replace(tables, videos=videos), MomentConfig())
  ev_, stats = out["eval"], out["stats"]
  assert ev_["sv_item"].tolist() == [502, 501, 500]
  np.testing.assert_array_equal(ev_["sv_progress"], np.array([0.0, 0.0, 0.5], np.float32))
  assert stats["sv_plays_without_duration"] == 2 and stats["unknown_videos"] == 1
  assert stats["live_exposures"] == 1 and stats["ignored_without_click"] == 0
