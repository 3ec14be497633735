"""Validation at the door: build_samples and train --data refuse a bad log before writing
anything (--novalidate skips it), warn about ids missing from side tables, and read a Spark-style
``events.parquet/`` folder of parts everywhere."""

import json
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
from mcjax.moment import MomentConfig
from mcjax.moment.synth import random_log
from mcjax.samples import build

import test_validate as tv  # the example log and its one-cell edits

ROOT = tv.ROOT
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _write(tmp_path, events, side, name="log") -> str:
  """Writes a log folder with the events as given (types too; nothing validated)."""
  log = io.write_log(str(tmp_path / name), tv._example()[0], side)
  pq.write_table(events, os.path.join(log, S.EVENTS_FILE))
  return log


def _random_tables():
  t = random_log(60, users=12, lives=6, hours=0.5, seed=4)
  side = {"users.parquet": t.users, "authors.parquet": t.authors, "lives.parquet": t.lives,
          "videos.parquet": t.videos}
  return t.events, side


def _bad_log(case):
  """(events, side) of the example log broken one way."""
  events, side = tv._example()
  if case == "nan watch time":
    return tv._set(events, "value", 8, float("nan")), side
  if case == "string ts_ms":
    i = events.column_names.index("ts_ms")
    return events.set_column(i, "ts_ms", events.column("ts_ms").cast(pa.string())), side
  if case == "negative gift":
    return tv._set(events, "value", 7, -1.0), side
  if case == "user changes inside an exposure":
    return tv._set(events, "user_id", 6, 2), side
  if case == "duplicated exposure row":
    return events.take([0] + list(range(events.num_rows))), side
  if case == "nan user_id":
    user = pa.array([float("nan") if i == 3 else float(u) for i, u in
                     enumerate(events.column("user_id").to_pylist())])
    return events.set_column(events.column_names.index("user_id"), "user_id", user), side
  if case == "half of lives.parquet missing":
    events, side = _random_tables()
    lives = side["lives.parquet"]
    return events, {**side, "lives.parquet": lives.slice(0, lives.num_rows // 2)}
  raise KeyError(case)


BAD = {
    "nan watch time": ["events.parquet: column 'value': NaN or infinite value", "row 8"],
    "string ts_ms": ["events.parquet: column 'ts_ms': wrong type string"],
    "negative gift": ["column 'value': gift value must be > 0", "row 7"],
    "user changes inside an exposure": ["column 'user_id': user_id differs within one "
                                        "exposure_id", "row 6"],
    "duplicated exposure row": ["several 'exposure' events", "row 0"],
    "nan user_id": ["events.parquet: column 'user_id': wrong type double", "row 3 holds NaN"],
    "half of lives.parquet missing": ["column 'item_id': live item_id missing from "
                                      "lives.parquet"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_build_samples_refuses_a_bad_log_before_writing(tmp_path, case):
  log = _write(tmp_path, *_bad_log(case))
  out = tmp_path / "samples"
  with pytest.raises(V.LogValidationError) as e:
    build.build_samples_dir(log, str(out), MomentConfig())
  msg = str(e.value)
  assert msg.startswith("log/events.parquet: ") and "\n" not in msg, msg
  for w in BAD[case]:
    assert w in msg, msg
  assert sorted(os.listdir(tmp_path)) == ["log"]  # no samples, no staging folder


def test_corrupt_events_parquet_is_named_with_or_without_validation(tmp_path):
  log = _write(tmp_path, *tv._example())
  with open(os.path.join(log, S.EVENTS_FILE), "wb") as f:
    f.write(b"PAR1 not really parquet PAR1")
  out = str(tmp_path / "samples")
  with pytest.raises(V.LogValidationError, match=r"^log/events.parquet: unreadable Parquet "
                     r"file \(ArrowInvalid"):
    build.build_samples_dir(log, out, MomentConfig())
  with pytest.raises(V.LogValidationError, match=r"^log/events.parquet: unreadable Parquet"):
    build.build_samples_dir(log, out, MomentConfig(), validate=False)
  assert not os.path.exists(out)


def test_novalidate_still_names_a_nan_id_by_file_column_and_row(tmp_path):
  log = _write(tmp_path, *_bad_log("nan user_id"))
  with pytest.raises(V.LogValidationError, match=r"^log/events.parquet: column 'user_id': wrong "
                     r"type double.*; row 3 holds NaN$"):
    build.build_samples_dir(log, str(tmp_path / "samples"), MomentConfig(), validate=False)


def test_sample_cache_may_not_overlap_the_log(tmp_path):
  log = _write(tmp_path, *tv._example())
  with pytest.raises(ValueError, match=r"the sample cache=.* lies inside the log="):
    build.ensure_samples(log, os.path.join(log, "cache"), MomentConfig())


def test_ids_missing_from_side_tables_warn_and_build(tmp_path, capsys):
  events, side = tv._example()
  side = {**side, "users.parquet": side["users.parquet"].slice(0, 1),
          "videos.parquet": side["videos.parquet"].slice(0, 1)}
  log = _write(tmp_path, events, side)
  stats = V.validate_log(log)
  assert stats.warnings == [
      "log/events.parquet: 1 of 2 user_id(s) missing from users.parquet (e.g. 2); their side "
      "features will be unknown (-1)",
      "log/events.parquet: 1 of 2 short-video item_id(s) missing from videos.parquet (e.g. "
      "201); their side features will be unknown (-1)"]
  assert "WARNING: log/events.parquet: 1 of 2 user_id(s)" in stats.summary()
  info = build.build_samples_dir(log, str(tmp_path / "samples"), MomentConfig())
  assert info["log_warnings"] == stats.warnings
  err = capsys.readouterr().err
  assert err.count("WARNING: log/events.parquet:") == 2
  assert json.load(open(tmp_path / "samples" / build.BUILD_INFO))["log_warnings"]


def _run(module, *flags):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, capture_output=True,
                        text=True, env=ENV)


def _last_line(run):
  return run.stderr.strip().splitlines()[-1]


def test_build_samples_launcher_refuses_in_one_line_and_novalidate_skips(tmp_path):
  log = _write(tmp_path, *_bad_log("duplicated exposure row"))
  out = tmp_path / "samples"
  r = _run("launch.build_samples", f"--events={log}", f"--out={out}")
  assert r.returncode == 1 and not out.exists()
  assert _last_line(r).startswith("INVALID: log/events.parquet: column 'event': exposure with "
                                  "several 'exposure' events (2 row(s)); e.g. row 0:")
  r = _run("launch.build_samples", f"--events={log}", f"--out={out}", "--novalidate")
  assert r.returncode == 0, r.stderr[-2000:]  # the engine drops the duplicate and counts it
  info = json.load(open(out / build.BUILD_INFO))
  assert info["stats"]["duplicate_exposure_events"] == 1 and "validate_s" in info


def test_train_data_door_refuses_a_bad_log_and_novalidate_skips_it(tmp_path):
  log = _write(tmp_path, *_bad_log("negative gift"))
  base = ["--config=mcjax/configs/smoke.py", f"--workdir={tmp_path / 'run'}",
          f"--config.data.log_dir={log}"]
  r = _run("launch.train", *base)
  assert r.returncode != 0
  assert _last_line(r).startswith("FATAL invalid --config.data.log_dir log: log/events.parquet: "
                                  "column "
                                  "'value': gift value must be > 0")
  assert not (tmp_path / "run").exists()
  # --novalidate passes the door: the next check (the config) is what stops this run
  r = _run("launch.train", *base, "--novalidate", "--config.train.batch_size=0")
  assert _last_line(r).startswith("FATAL invalid config: config.train.batch_size must be")


def _spark_log(tmp_path, name="spark") -> str:
  """The example log with events.parquet as a Spark-style folder of three parts."""
  events, side = tv._example()
  log = _write(tmp_path, events, side, name)
  parts = os.path.join(log, S.EVENTS_FILE)
  os.remove(parts)
  os.mkdir(parts)
  for i, (a, b) in enumerate(((0, 5), (5, 9), (9, 12))):
    pq.write_table(events.slice(a, b - a), os.path.join(parts, f"part-{i:05d}-c0.snappy.parquet"))
  open(os.path.join(parts, "_SUCCESS"), "w").close()
  with open(os.path.join(parts, ".part-00000-c0.snappy.parquet.crc"), "wb") as f:
    f.write(b"\x00crc")
  return log


def test_spark_folder_of_parts_is_accepted_everywhere(tmp_path):
  log = _spark_log(tmp_path)
  events, _ = tv._example()
  assert io.read_events(log).equals(events)
  stats = V.validate_log(log)
  assert stats.rows == 12 and stats.exposures == 4
  r = _run("launch.validate", f"--log={log}")
  assert r.returncode == 0 and "exposures 4" in r.stdout, r.stderr
  info = build.build_samples_dir(log, str(tmp_path / "s1"), MomentConfig())
  flat = _write(tmp_path, *tv._example(), "flat")
  assert info["counts"] == build.build_samples_dir(flat, str(tmp_path / "s2"),
                                                   MomentConfig())["counts"]
  parts = os.path.join(log, S.EVENTS_FILE)  # the last part renamed first: out of time order
  os.rename(os.path.join(parts, "part-00002-c0.snappy.parquet"),
            os.path.join(parts, "part-00000-a.snappy.parquet"))
  with pytest.raises(V.LogValidationError, match="spark/events.parquet: column 'ts_ms': rows "
                     r"not sorted by \(ts_ms, exposure_id\)"):
    V.validate_log(log)


def test_empty_parts_folder_is_named(tmp_path):
  log = _spark_log(tmp_path)
  for name in os.listdir(os.path.join(log, S.EVENTS_FILE)):
    os.remove(os.path.join(log, S.EVENTS_FILE, name))
  with pytest.raises(V.LogValidationError, match="spark/events.parquet: a folder without "
                     "Parquet parts"):
    V.validate_log(log)


def test_cache_key_covers_side_tables_and_parts(tmp_path):
  log = _spark_log(tmp_path)
  cfg = MomentConfig()
  key = build.cache_key(log, cfg)
  users = os.path.join(log, "users.parquet")
  pq.write_table(pq.read_table(users).slice(0, 1), users)
  assert build.cache_key(log, cfg) != key
  key = build.cache_key(log, cfg)
  events, _ = tv._example()
  pq.write_table(events.slice(0, 0), os.path.join(log, S.EVENTS_FILE, "part-00009.parquet"))
  assert build.cache_key(log, cfg) != key


def test_ensure_samples_rebuilds_when_a_side_table_changes(tmp_path):
  log = _write(tmp_path, *tv._example())
  root = str(tmp_path / "cache")
  first = build.ensure_samples(log, root, MomentConfig())
  lives = os.path.join(log, "lives.parquet")
  table = pq.read_table(lives)
  pq.write_table(tv._set(table, "category", 0, 3), lives)
  second = build.ensure_samples(log, root, MomentConfig())
  assert second != first and os.path.isdir(first) and os.path.isdir(second)


def test_validator_on_dense_and_sparse_exposure_ids_agrees():
  events, side = _random_tables()
  dense = V.validate_tables(events, side)
  i = events.column_names.index("exposure_id")
  sparse = events.set_column(i, "exposure_id",
                             pa.array(events.column("exposure_id").to_numpy() * 1_000_003))
  assert V.validate_tables(sparse, side) == dense
  broken = tv._set(sparse, "user_id", int(np.flatnonzero(
      sparse.column("event").to_numpy(zero_copy_only=False) == "click")[0]), 999)
  with pytest.raises(V.LogValidationError, match="user_id differs within one exposure_id"):
    V.validate_tables(broken, side)
