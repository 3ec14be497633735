"""The Beam engine (mcjax.samples.beam) builds the same samples folder as the in-process one.

Each test builds a log with both engines (the Beam one on the DirectRunner, in-process) and
compares everything a reader sees: the stats, every materialised train sample and evaluation
record, the stored records (history references included), the history stores file by file,
the sample times and samples_info.json (all but the part layout, which follows time ranges in
the Beam engine). Rows are compared in the order both engines write, (sample_ts_ms,
exposure_id, kind), which is asserted too.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcjax import convert
from mcjax.eventlog import io as log_io
from mcjax.eventlog.validate import LogValidationError
from mcjax.moment import MomentConfig
from mcjax.samples.beam import files as beam_files
from mcjax.samples.beam import layout as beam_layout
from mcjax.samples.beam import stages
from mcjax.samples import build, loader, shards
from mcjax.sim import world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from test_convert import _m3  # the KuaiLive-M3 source fixture (tests/ is on pytest's path)

# Several keys per stage, several crowd ranges per live (carries), several write parts; most
# batches between stages travel as spilled files, the smaller ones inline.
LAYOUT = stages.Layout(buckets=3, salts=2, crowd_range_ms=600_000, write_range_ms=6 * 3_600_000,
                       spill_rows=64)
MODES = {"realtime": MomentConfig(),
         "on_close": MomentConfig(mode="on_close"),
         "fast_slow": MomentConfig(mode="fast_slow", features_at="sample")}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
  return world.build(str(tmp_path_factory.mktemp("w") / "world"), "small", 4, live_exposures=700)


@pytest.fixture(scope="module")
def m3_log(tmp_path_factory):
  base = tmp_path_factory.mktemp("m3")
  (base / "src").mkdir()
  out = str(base / "log")
  convert.convert_to_log("kuailive_m3", _m3(base / "src"), out)
  return out


def _both(log, tmp, cfg, validate=True, layout=LAYOUT):
  local = build.build_samples_dir(log, str(tmp / "local"), cfg, validate=validate)
  beam = build.build_samples_dir(log, str(tmp / "beam"), cfg, validate=validate, engine="beam",
                                 beam_layout=layout)
  return local, beam


def _records(src):
  blocks = src._blocks([(p, b) for p, data in enumerate(src._data) for b in range(len(data))])
  return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _assert_same(tmp, local, beam):
  assert beam["stats"] == local["stats"]
  assert beam["counts"] == local["counts"]
  for split in ("train", "eval"):
    a = shards.open_samples(str(tmp / "local"), split)
    b = shards.open_samples(str(tmp / "beam"), split)
    assert len(a) == len(b) > 0
    ta, tb = a.__getitems__(np.arange(len(a))), b.__getitems__(np.arange(len(b)))
    key = np.stack([tb["sample_ts_ms"], tb["exposure_id"], tb["kind"]])
    assert (np.lexsort(key[::-1]) == np.arange(len(b))).all()  # already in sorted order
    for name in ta:
      np.testing.assert_array_equal(tb[name], ta[name], err_msg=f"{split}/{name}")
    ra, rb = _records(a), _records(b)
    for name in ra:  # the stored references too, not only what they materialise to
      np.testing.assert_array_equal(rb[name], ra[name], err_msg=f"{split} stored {name}")
    for p in ("sv", "lv"):
      manifest = lambda root: json.load(open(root / split / "history" / p / "checksums.json"))
      assert manifest(tmp / "beam") == manifest(tmp / "local"), f"{split} {p} history store"
    info = lambda root: json.load(open(root / split / "samples_info.json"))
    ia, ib = info(tmp / "local"), info(tmp / "beam")
    assert [ia.pop("parts"), ib.pop("parts")] and ia == ib
    ts = lambda root: np.load(root / split / "sample_ts_ms.npy")
    np.testing.assert_array_equal(ts(tmp / "beam"), ts(tmp / "local"))
  assert not [n for n in os.listdir(tmp) if n.startswith(".tmp-")]  # no staging left


@pytest.mark.parametrize("mode", sorted(MODES))
def test_beam_matches_in_process_on_a_small_world(small_world, tmp_path, mode):
  local, beam = _both(small_world, tmp_path, MODES[mode])
  _assert_same(tmp_path, local, beam)
  assert beam["beam_spill_bytes"] > 0
  assert beam["engine"] == "beam" and local["stats"]["live_exposures"] > 500
  # The trainer's input pipeline reads the Beam-built folder like any other.
  src = shards.open_samples(str(tmp_path / "beam"), "train")
  batch = next(iter(loader.make_batches(src, batch_size=64, sv_len=8, lv_len=4)))
  assert batch["sv_item"].shape == (64, 8)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_beam_matches_in_process_on_converted_kuailive_m3(m3_log, tmp_path, mode):
  """Every batch inline here (spill_rows 0): the runner carries the data itself; the write
  ranges are the automatic ones."""
  layout = dataclasses.replace(LAYOUT, spill_rows=0, write_range_ms=0)
  local, beam = _both(m3_log, tmp_path, MODES[mode], layout=layout)
  _assert_same(tmp_path, local, beam)
  assert beam["beam_spill_bytes"] == 0


def test_automatic_keys_keep_their_size_as_the_log_grows(small_world):
  auto = stages.Layout()
  assert auto.buckets == auto.write_range_ms == 0
  day = 86_400_000
  small = auto.resolve(1000, day)
  assert (small.buckets, small.write_range_ms) == (beam_layout.MIN_AUTO_BUCKETS, day)
  big = auto.resolve(100 * beam_layout.AUTO_BUCKET_EVENTS + 1, day)
  assert big.buckets == 101
  ranges = -(-(100 * beam_layout.AUTO_BUCKET_EVENTS + 1) // beam_layout.AUTO_WRITE_EVENTS)
  assert big.write_range_ms == -(-day // (ranges * 60_000)) * 60_000
  assert auto.resolve(10 ** 12, 5).write_range_ms == beam_layout.MIN_WRITE_RANGE_MS
  fixed = stages.Layout(buckets=5, write_range_ms=7).resolve(10 ** 9, day)
  assert (fixed.buckets, fixed.write_range_ms) == (5, 7)
  # the log's extent comes from the Parquet footers
  ts = log_io.read_events(small_world)["ts_ms"].to_numpy()
  assert beam_files.event_extent(small_world) == (len(ts), int(ts.max() - ts.min() + 1))
  with pytest.raises(ValueError, match=r"Layout\.spill_rows=-1: expected >= 0"):
    stages.Layout(spill_rows=-1).validate()


def _as_parts(table: pa.Table, folder, n: int, row_group: int):
  folder.mkdir()
  cuts = np.linspace(0, table.num_rows, n + 1).astype(int)
  for i in range(n):
    pq.write_table(table.slice(cuts[i], cuts[i + 1] - cuts[i]),
                   folder / f"part-{i:05d}.parquet", row_group_size=row_group)


def test_log_in_parquet_parts_gives_the_same_samples(small_world, tmp_path):
  """Events and users as folders of parts with small row groups (many read batches), lives
  that start after some of their events (the all-window starts there), a live, users and
  videos missing from the side tables (allowed with --novalidate: unknown ids)."""
  log = tmp_path / "parts"
  shutil.copytree(small_world, log)
  events = log_io.read_events(str(log))
  os.remove(log / "events.parquet")
  _as_parts(events, log / "events.parquet", 3, row_group=4000)
  users = log_io.read_side(str(log), "users.parquet")
  os.remove(log / "users.parquet")
  _as_parts(users.slice(5), log / "users.parquet", 2, row_group=100)
  lives = log_io.read_side(str(log), "lives.parquet").sort_by("live_id")
  start = lives["start_ms"].to_numpy() + np.arange(lives.num_rows) % 3 * 1_800_000
  lives = lives.set_column(lives.schema.get_field_index("start_ms"), "start_ms", pa.array(start))
  pq.write_table(lives.slice(1), log / "lives.parquet")
  videos = log_io.read_side(str(log), "videos.parquet")
  pq.write_table(videos.slice(3), log / "videos.parquet")
  cfg = MomentConfig()
  local, beam = _both(str(log), tmp_path, cfg, validate=False)
  _assert_same(tmp_path, local, beam)
  stats = local["stats"]
  assert stats["unknown_lives"] > 0 and stats["unknown_users"] > 0
  assert stats["unknown_videos"] > 0


def test_bad_log_fails_with_the_validator_error_and_writes_nothing(small_world, tmp_path):
  log = tmp_path / "bad"
  shutil.copytree(small_world, log)
  events = log_io.read_events(str(log))
  user = events["user_id"].to_numpy().copy()
  user[1234] = -7
  pq.write_table(events.set_column(1, "user_id", pa.array(user)), log / "events.parquet")
  errors = []
  for engine in ("local", "beam"):
    with pytest.raises(LogValidationError) as e:
      build.build_samples_dir(str(log), str(tmp_path / engine), MomentConfig(), engine=engine,
                              beam_layout=LAYOUT if engine == "beam" else None)
    errors.append(str(e.value))
  assert errors[0] == errors[1] and "column 'user_id': negative value" in errors[0]
  assert "row 1234" in errors[0]
  # --novalidate: the pipeline itself names the file, column and row of a null id, and a
  # failed run leaves no samples folder and no staging folder behind.
  user = np.abs(user).tolist()
  user[2345] = None
  pq.write_table(events.set_column(1, "user_id", pa.array(user, pa.int64())),
                 log / "events.parquet")
  with pytest.raises(LogValidationError, match=r"events.parquet: column 'user_id': null "
                                               r"values .*row 2345"):
    build.build_samples_dir(str(log), str(tmp_path / "out"), MomentConfig(), engine="beam",
                            validate=False, beam_layout=LAYOUT)
  assert sorted(os.listdir(tmp_path)) == ["bad"]


def test_launcher_passes_beam_flags_and_fills_the_trainer_cache(tmp_path):
  example = os.path.join(ROOT, "data", "example")
  run = lambda *flags: subprocess.run(  # noqa: E731
      [sys.executable, "-m", "launch.build_samples", f"--events={example}", *flags], cwd=ROOT,
      capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  cache = tmp_path / "cache"
  r = run("--engine=beam", f"--cache_dir={cache}", "--runner=DirectRunner",
          "--direct_num_workers=1", "--config.beam.buckets=2")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Beam pipeline" in r.stdout
  path = build.ensure_samples(example, str(cache), MomentConfig())  # what launch.train calls
  assert os.path.dirname(path) == str(cache)
  info = json.load(open(os.path.join(path, build.BUILD_INFO)))
  assert info["engine"] == "beam" and info["beam_layout"]["buckets"] == 2
  assert "--runner=DirectRunner" in info["beam_args"]
  r = run("--engine=beam", f"--out={tmp_path / 'x'}", "--runer=DirectRunner")
  assert r.returncode == 1 and "unknown pipeline flag(s) ['runer']" in r.stderr
  r = run(f"--out={tmp_path / 'y'}", "--runner=DirectRunner")
  assert r.returncode == 1 and "Beam's flags need --engine=beam" in r.stderr
  assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_no_runner_named_runs_locally_without_downloading_prism():
  """Beam's DirectRunner first tries the Prism runner, which it downloads: with no --runner the
  pipeline runs on Beam's local FnApiRunner (the same --direct_* flags); a named runner stays."""
  from mcjax.samples.beam.job import pipeline_options
  opts = pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  assert opts.get_all_options()["runner"] == "FnApiRunner"
  assert opts.get_all_options()["direct_num_workers"] == 2
  assert pipeline_options(["--runner=FlinkRunner"]).get_all_options()["runner"] == "FlinkRunner"


def test_events_lost_by_the_runner_fail_the_build(small_world, tmp_path, monkeypatch):
  """Every event row must reach the engine: a runner that drops an element fails the build
  with one line, and nothing is written."""
  real = stages.route_events

  def lossy(cols, layout):
    out = list(real(cols, layout))
    drop = next(i for i, (tag, _, _) in enumerate(out) if tag == "events")
    return out[:drop] + out[drop + 1:]

  monkeypatch.setattr(stages, "route_events", lossy)
  out = tmp_path / "beam"
  with pytest.raises(RuntimeError, match=r"lost events: [\d,]+ of the ([\d,]+) rows of "
                     r"events\.parquet reached the engine \(\1 were read\)"):
    build.build_samples_dir(small_world, str(out), MomentConfig(), engine="beam",
                            beam_layout=LAYOUT)
  assert not out.exists()
