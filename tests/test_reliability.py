"""Nothing lost, nothing silently wrong: every writer refuses to clobber an input or a file of
another kind; request ids are integers or refused; each user-caused failure of a launcher is
one ``ERROR:`` line with exit status 1 (no traceback, no usage dump)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcjax.eventlog import files, io
from mcjax.serve import ids

import test_validate as tv

ROOT = tv.ROOT
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}


def _run(*argv: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                        text=True, env=ENV, timeout=300)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
  """The single stderr line of a refused command (exit 1, no traceback)."""
  assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  return lines[0]


def _requests(path, **columns) -> str:
  cols = {"request_id": [1, 1], "user_id": [3, 3], "ts_ms": [10, 10], "live_id": [5, 6]}
  cols.update(columns)
  pq.write_table(pa.table(cols), path)
  return str(path)


@pytest.fixture()
def fake_run(tmp_path):
  """A workdir with a config.json (the guards run before anything is restored) and a log."""
  work = tmp_path / "run"
  work.mkdir()
  (work / "config.json").write_text("{}")
  log = io.write_log(str(tmp_path / "log"), *tv._example())
  return str(work), log


# ----------------------------------------------------------------------------- outputs

def test_score_refuses_an_output_inside_the_log_or_equal_to_the_requests(tmp_path, fake_run):
  work, log = fake_run
  req = _requests(tmp_path / "req.parquet", extra=["a", "b"])
  events = os.path.join(log, "events.parquet")
  before = open(events, "rb").read(), open(req, "rb").read()
  line = _one_error_line(_run("launch.score", f"--workdir={work}", f"--log={log}",
                              f"--requests={req}", f"--out={events}", "--overwrite"))
  assert line == (f"ERROR: --out={events} lies inside --log={log}: an output may not overlap "
                  "an input (choose another output folder)")
  line = _one_error_line(_run("launch.score", f"--workdir={work}", f"--log={log}",
                              f"--requests={req}", f"--out={req}", "--overwrite"))
  assert line == (f"ERROR: --out={req} is the same file as --requests={req}: an output may not "
                  "overlap an input (choose another output folder)")
  assert (open(events, "rb").read(), open(req, "rb").read()) == before


def test_score_output_needs_overwrite_and_replaces_only_a_parquet_file(tmp_path, fake_run):
  work, log = fake_run
  req = _requests(tmp_path / "req.parquet")
  common = ("launch.score", f"--workdir={work}", f"--log={log}", f"--requests={req}")
  (tmp_path / "notes.txt").write_text("keep me")
  line = _one_error_line(_run(*common, f"--out={tmp_path / 'notes.txt'}"))
  assert line == (f"ERROR: --out={tmp_path / 'notes.txt'} already exists (pass --overwrite to "
                  "replace it)")
  line = _one_error_line(_run(*common, f"--out={tmp_path / 'notes.txt'}", "--overwrite"))
  assert line == (f"ERROR: --out={tmp_path / 'notes.txt'} is not a Parquet file; --overwrite "
                  "only replaces a Parquet file (choose another --out)")
  (tmp_path / "folder").mkdir()
  line = _one_error_line(_run(*common, f"--out={tmp_path / 'folder'}", "--overwrite"))
  assert line == (f"ERROR: --out={tmp_path / 'folder'} is a folder, not a Parquet file; "
                  "--overwrite only replaces a Parquet file (choose another --out)")
  assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_export_refuses_a_world_folder_and_an_overlap(tmp_path, fake_run):
  work, log = fake_run
  meta = os.path.join(log, "meta.json")
  with open(meta, "w") as f:
    f.write('{"world": 1}')
  line = _one_error_line(_run("launch.export", f"--workdir={work}", f"--out={log}"))
  assert line == f"ERROR: --out={log} already exists (pass --overwrite to replace it)"
  line = _one_error_line(_run("launch.export", f"--workdir={work}", f"--out={log}",
                              "--overwrite"))
  assert line.startswith(f"ERROR: --out={log} is not an export folder (it holds none of "
                         "['load_exported.py']); --overwrite only replaces an export folder")
  line = _one_error_line(_run("launch.export", f"--workdir={work}", f"--out={work}",
                              "--overwrite"))
  assert line.startswith(f"ERROR: --out={work} contains --workdir's config.json="
                         f"{os.path.join(work, 'config.json')}: an output may not overlap")
  inside = os.path.join(work, "ckpt", "export")
  line = _one_error_line(_run("launch.export", f"--workdir={work}", f"--out={inside}"))
  assert line.startswith(f"ERROR: --out={inside} lies inside --workdir's ckpt="
                         f"{os.path.join(work, 'ckpt')}")
  beside = os.path.join(work, "export")  # the run's folder itself is fine (passes the guard)
  line = _one_error_line(_run("launch.export", f"--workdir={work}", f"--out={beside}"))
  assert line == f"FATAL workdir {work}: no checkpoint (ckpt/ is missing)"
  assert open(meta).read() == '{"world": 1}'


def test_generate_onto_an_existing_path_is_one_line(tmp_path):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "mine.txt").write_text("x")
  line = _one_error_line(_run("launch.generate", "--preset=small", f"--out={tmp_path / 'w'}"))
  assert line == (f"ERROR: --out={tmp_path / 'w'} already exists (pass --overwrite to replace "
                  "it)")
  line = _one_error_line(_run("launch.generate", "--preset=small", f"--out={tmp_path / 'w'}",
                              "--overwrite"))
  assert line.startswith(f"ERROR: --out={tmp_path / 'w'} is not an event-log folder")
  assert os.listdir(tmp_path / "w") == ["mine.txt"]


def test_staged_file_leaves_the_old_file_when_the_writer_fails(tmp_path):
  target = str(tmp_path / "out.parquet")
  with open(target, "w") as f:
    f.write("old")
  with pytest.raises(RuntimeError):
    with files.staged_file(target) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("killed")
  assert open(target).read() == "old" and os.listdir(tmp_path) == ["out.parquet"]
  with files.staged_file(target) as tmp:
    with open(tmp, "w") as f:
      f.write("new")
  assert open(target).read() == "new" and os.listdir(tmp_path) == ["out.parquet"]


# --------------------------------------------------------------------------------- ids

@pytest.mark.parametrize("values,line", [
    (pa.array([1.0, float("nan")]), "r.parquet: column 'user_id', row 1: nan: double is not an "
     "integer type (store ids and times as int64)"),
    (pa.array([1.7, 2.0]), "r.parquet: column 'user_id', row 0: 1.7: double is not an integer "
     "type (store ids and times as int64)"),
    (pa.array([1.0, 2.0]), "r.parquet: column 'user_id', row 0: 1.0: double is not an integer "
     "type (store ids and times as int64)"),
    (pa.array(["12", "x7"]), "r.parquet: column 'user_id', row 1: 'x7': not an integer (decimal "
     "digits expected)"),
    (pa.array(["1", "99999999999999999999"]), "r.parquet: column 'user_id', row 1: "
     "'99999999999999999999': outside 0..2^63-1"),
    (pa.array([1, None]), "r.parquet: column 'user_id', row 1: None: a missing value, not an "
     "integer"),
    (pa.array([5, -2]), "r.parquet: column 'user_id', row 1: -2: a negative id or time (an "
     "event log holds none)"),
    (pa.array([2**64 - 1, 1], pa.uint64()), "r.parquet: column 'user_id', row 0: "
     "18446744073709551615: outside 0..2^63-1"),
])
def test_request_ids_that_are_not_integers_are_refused(values, line):
  with pytest.raises(ids.IdError) as e:
    ids.column_ids(pa.table({"user_id": values}), "user_id", "r.parquet")
  assert str(e.value) == line


def test_request_ids_as_integers_or_exact_text_are_read_exactly():
  table = pa.table({"a": pa.array([2**63 - 1, 0], pa.int64()), "b": ["9223372036854775807", "7"],
                    "c": pa.array([3, 4], pa.uint32())})
  assert ids.column_ids(table, "a", "f").tolist() == [2**63 - 1, 0]
  assert ids.column_ids(table, "b", "f").tolist() == [2**63 - 1, 7]
  assert ids.column_ids(table, "c", "f").tolist() == [3, 4]


@pytest.mark.parametrize("value,name,line", [
    (1.7, "user_id", "user_id: 1.7: not an integer"),
    (float("nan"), "user_id", "user_id: nan: not an integer"),
    (np.float64(3.0), "ts_ms", "ts_ms: 3.0: not an integer"),
    ("abc", "user_id", "user_id, row 0: 'abc': not an integer (decimal digits expected)"),
    (2**64, "user_id", "user_id: 18446744073709551616: outside 0..2^63-1"),
    ([1, 2.5], "live_ids", "live_ids, row 1: 2.5: not an integer"),
    ([4, -1], "live_ids", "live_ids, row 1: -1: a negative id or time (an event log holds none)"),
])
def test_api_ids_that_are_not_integers_are_refused(value, name, line):
  with pytest.raises(ids.IdError) as e:
    ids.argument_ids(value, name)
  assert str(e.value) == line


def test_api_ids_accept_ints_numpy_ints_and_text():
  assert ids.argument_ids(7, "u").tolist() == [7]
  assert ids.argument_ids(np.int32(7), "u").tolist() == [7]
  assert ids.argument_ids([1, np.int64(2), "3"], "l").tolist() == [1, 2, 3]
  assert ids.argument_ids(np.arange(3, dtype=np.uint16), "l").tolist() == [0, 1, 2]
  with pytest.raises(ids.IdError, match=r"^live_ids: 2 is listed twice \(rows 1 and 3\)"):
    ids.check_distinct(np.asarray([1, 2, 3, 2]), "live_ids")


@pytest.mark.parametrize("columns,line", [
    ({"user_id": [3, 4]}, "R: request_id 1 has several user_id values (rows 0 and 1): one "
     "request is one user at one time; give each its own request_id"),
    ({"ts_ms": [10, 11]}, "R: request_id 1 has several ts_ms values (rows 0 and 1): one request "
     "is one user at one time; give each its own request_id"),
    ({"live_id": [6, 6]}, "R: request_id 1 lists live_id 6 twice (rows 0 and 1): a candidate is "
     "ranked once; drop the duplicate"),
    ({k: [] for k in ("request_id", "user_id", "ts_ms", "live_id")}, "R: no rows (nothing to "
     "score)"),
])
def test_request_files_with_mixed_users_or_duplicate_candidates_are_refused(columns, line):
  req = {"request_id": [1, 1], "user_id": [3, 3], "ts_ms": [10, 10], "live_id": [5, 6]}
  req.update(columns)
  with pytest.raises(ids.IdError) as e:
    ids.check_requests({k: np.asarray(v, np.int64) for k, v in req.items()}, "R")
  assert str(e.value) == line


def test_score_refuses_a_nan_user_id_before_scoring(tmp_path, fake_run):
  work, log = fake_run
  req = _requests(tmp_path / "req.parquet", user_id=[3.0, float("nan")])
  line = _one_error_line(_run("launch.score", f"--workdir={work}", f"--log={log}",
                              f"--requests={req}", f"--out={tmp_path / 'o.parquet'}"))
  assert line == (f"ERROR: --requests={req}: column 'user_id', row 1: nan: double is not an "
                  "integer type (store ids and times as int64)")
  assert not os.path.exists(tmp_path / "o.parquet")


# ------------------------------------------------------------------------ one line each

def test_bad_flags_and_missing_files_are_one_line(tmp_path, fake_run):
  work, log = fake_run
  line = _one_error_line(_run("launch.build_samples", f"--events={log}",
                              f"--out={tmp_path / 's'}", "--num_shards=-3"))
  assert line == "ERROR: flag --num_shards=-3: -3 is not a positive integer"
  line = _one_error_line(_run("launch.build_samples", f"--events={log}",
                              f"--out={tmp_path / 's'}", "--config.moment.window_s=0"))
  assert line == "ERROR: --config.moment.window_s=0.0: expected a number >= 0.001 (seconds)"
  line = _one_error_line(_run("launch.model_info", f"--config={tmp_path / 'none.py'}"))
  assert line.startswith("ERROR: ") and "none.py" in line
  missing = tmp_path / "nope.parquet"
  line = _one_error_line(_run("launch.score", f"--workdir={work}", f"--log={log}",
                              f"--requests={missing}", f"--out={tmp_path / 'o.parquet'}"))
  assert line == f"FATAL --requests={missing}: no such file"
  json.dumps(line)  # one printable line


# ------------------------------------------------------------------------------ memory

def _tiny():
  import importlib.util
  from mcjax import configs
  spec = importlib.util.spec_from_file_location("tiny", configs.path("tiny"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_memory_estimate_refuses_a_batch_that_cannot_fit():
  from mcjax.runtime import memory
  cfg = _tiny()
  est = memory.estimate(cfg)
  assert est.row_bytes == 712 and est.state > 0 and est.activation_row_bytes > est.row_bytes
  limit = 4 * 2**30
  fits = est.largest_batch(limit)
  assert est.total(fits) <= limit < est.total(fits + 1)
  memory.check(cfg, limit)  # the config's own batch fits
  cfg.train.batch_size = fits + 1
  with pytest.raises(memory.MemoryFitError) as e:
    memory.check(cfg, limit)
  assert str(e.value) == (
      f"config.train.batch_size={fits + 1}: needs about {est.total(fits + 1) / 2**30:.1f} GB, "
      f"more than the 4.0 GB of --memory_limit_gb (mostly activations: "
      f"{est.parts(fits + 1)['activations'] / 2**30:.1f} GB); the largest batch size that fits "
      f"is {fits} (--memory_limit_gb overrides the limit)")


def test_train_refuses_a_huge_batch_before_any_work(tmp_path):
  work = tmp_path / "run"
  r = _run("launch.train", "--config=mcjax/configs/tiny.py", f"--workdir={work}",
           "--config.train.batch_size=100000000")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  (line,) = [x for x in r.stderr.splitlines() if x.startswith("FATAL")]
  assert line.startswith("FATAL config.train.batch_size=100000000: needs about ")
  assert "(mostly activations: " in line and "the largest batch size that fits is " in line
  assert not work.exists()  # nothing generated, built or allocated


def test_api_overrides_that_are_not_a_dict_are_one_value_error():
  import mcjax
  with pytest.raises(ValueError) as e:
    mcjax.load_config("tiny", ["train.batch_size=8"])
  assert str(e.value) == ("overrides must be a dict of dotted keys to values, e.g. "
                          "{'train.batch_size': 128}; got a list: ['train.batch_size=8']")


@pytest.mark.parametrize("err,line", [
    (OSError(30, "Read-only file system", "/ro/run/config.json"),
     "ERROR: cannot write /ro/run/config.json: read-only file system"),
    (OSError(28, "No space left on device", "/full/s/part.npy"),
     "ERROR: cannot write /full/s/part.npy: no space left on device"),
    (PermissionError(13, "Permission denied", "/root/x"),
     "ERROR: cannot write /root/x: permission denied"),
    (FileNotFoundError(2, "No such file or directory", "cfg.py"),
     "ERROR: cfg.py: no such file or directory"),
    (ids.IdError("x" * 5_000_000), "ERROR: " + "x" * 597 + "..."),
])
def test_launcher_handler_turns_user_errors_into_one_line(err, line, capsys):
  import launch

  def main(argv):
    raise err

  with pytest.raises(SystemExit) as e:
    launch.guarded(main)(["prog"])
  assert e.value.code == 1
  assert capsys.readouterr().err == line + "\n"


def test_launcher_handler_keeps_tracebacks_for_bugs():
  import launch

  def main(argv):
    return {}["missing"]

  with pytest.raises(KeyError):
    launch.guarded(main)(["prog"])


# ----------------------------------------------------------------------- converters

def test_converter_counts_duplicate_and_conflicting_rows(tmp_path):
  """A click.csv row written twice is one exposure (the copy dropped and counted); two
  different user.csv rows of one user keep the first, counted; a room ending before it
  starts is rewritten and counted."""
  import test_convert as tc
  from mcjax import convert
  src = tc._kuailive(tmp_path)
  click = (tmp_path / "click.csv").read_text().splitlines()
  (tmp_path / "click.csv").write_text("\n".join(click + [click[1]]) + "\n")
  user = (tmp_path / "user.csv").read_text().splitlines()
  (tmp_path / "user.csv").write_text("\n".join(user + ["1,50+,F,CN,z,0,3,0"]) + "\n")
  room = (tmp_path / "room.csv").read_text().splitlines()
  (tmp_path / "room.csv").write_text("\n".join(
      room + [f"20250501,102,11,1,{tc.T + 500},{tc.T},Music,6"]) + "\n")
  events, side, stats = convert.convert_tables("kuailive", src)
  assert stats.rows_read["click.csv"] == 4
  assert stats.dropped["click.csv: duplicate row"] == 1
  assert stats.dropped["user.csv: conflicting rows of one user_id (first kept)"] == 1
  assert stats.notes["lives ending before they start (end set to start)"] == 1
  assert events.num_rows == 14  # as without the copy
  assert "click.csv: duplicate row=1" in stats.summary()


# -------------------------------------------------------------------------- validator

def test_validator_refuses_a_log_without_live_exposures():
  import pyarrow.compute as pc
  from mcjax.eventlog import validate as V
  events, side = tv._example()
  with pytest.raises(V.LogValidationError) as e:
    V.validate_tables(events.filter(pc.equal(events["domain"], "short_video")), side)
  assert str(e.value) == ("events.parquet: column 'event': no live exposure: nothing to build "
                          "samples from, train or score")


def test_validator_refuses_a_live_exposure_far_outside_its_live():
  from mcjax.eventlog import validate as V
  events, side = tv._example()
  lives = side["lives.parquet"]
  years = 40 * 365 * 86_400_000  # the exposures are 40 years after their live ended
  side["lives.parquet"] = lives.set_column(3, "start_ms", pa.array([lives["start_ms"][0].as_py()
                                                                    - years]))
  side["lives.parquet"] = side["lives.parquet"].set_column(4, "end_ms", pa.array(
      [lives["end_ms"][0].as_py() - years]))
  with pytest.raises(V.LogValidationError) as e:
    V.validate_tables(events, side)
  assert str(e.value).startswith(
      "events.parquet: column 'ts_ms': live exposure outside its live's span in lives.parquet "
      "(start_ms - 24 h .. end_ms + 24 h) (2 row(s)); e.g. row 0: ts_ms=1746057600000, ")


def test_validator_counts_duplicate_event_rows():
  from mcjax.eventlog import validate as V
  events, side = tv._example()
  stats = V.validate_tables(events.take([0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11]), side)
  assert stats.warnings == ["events.parquet: 1 event row(s) repeat an earlier row in every "
                            "column (e.g. row 7): each counts as one more event"]
  assert V.validate_tables(events, side).warnings == []


@pytest.mark.parametrize("overrides,line", [
    ({"data.log_dir": 0}, "config.data.log_dir=0: 0 is of original type <class 'int'> and cannot "
     "be casted to type <class 'str'>"),
    ({"mesh.shape": None}, "config.mesh.shape=None: expected a tuple like its default (-1, 1)"),
])
def test_api_overrides_of_another_type_are_one_value_error(overrides, line):
  import mcjax
  with pytest.raises(ValueError) as e:
    mcjax.load_config("tiny", overrides)
  assert str(e.value) == line


# --------------------------------------------------------------------------- kill -9

from test_safe_outputs import _snapshot  # noqa: E402  {relative path: bytes} of a folder


def _assert_same_samples(a: str, b: str) -> None:
  from mcjax.samples import shards
  for split in ("train", "eval"):
    x, y = shards.open_samples(a, split), shards.open_samples(b, split)
    assert len(x) == len(y)
    x, y = x.__getitems__(list(range(len(x)))), y.__getitems__(list(range(len(y))))
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)  # NaN equals NaN here


def _kill_at(argv, delay_s: float) -> None:
  import signal
  import time
  proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  time.sleep(delay_s)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


@pytest.mark.parametrize("program", ["convert", "build_samples"])
def test_kill_9_leaves_nothing_a_later_step_accepts(tmp_path, program):
  """A run killed at random points leaves no output or the complete one (never a part that
  validates), and a rerun gives the uninterrupted run's output byte for byte."""
  import random
  import time
  import test_convert as tc
  from mcjax.eventlog import validate as V
  if program == "convert":
    src = tc._kuailive(tc._sub(tmp_path, "src"))
    argv = lambda out: ["launch.convert", "--format=kuailive", f"--src={src}", f"--out={out}"]
    accepted = lambda out: V.validate_log(out)
  else:
    src = io.write_log(str(tmp_path / "log"), *tv._example())
    argv = lambda out: ["launch.build_samples", f"--events={src}", f"--out={out}"]
    accepted = lambda out: json.load(open(os.path.join(out, "build_info.json")))
  start = time.perf_counter()
  ref = str(tmp_path / "ref")
  assert _run(*argv(ref)).returncode == 0
  full_s = time.perf_counter() - start
  want = _snapshot(ref)
  rng = random.Random(7)
  for i in range(3):
    out = str(tmp_path / f"out{i}")
    _kill_at(argv(out), rng.uniform(0.2, 1.0) * full_s)
    if os.path.exists(out):  # killed after the rename: the output is whole
      accepted(out)
    r = _run(*argv(out), *(["--overwrite"] if os.path.exists(out) else []))
    assert r.returncode == 0, r.stderr[-2000:]
    got = _snapshot(out)
    if program == "build_samples":  # timings and NaN payloads differ: compare the samples
      _assert_same_samples(ref, out)
      skip = lambda k: k == "build_info.json" or "array_record" in k or "checksums" in k
      got, want_ = ({k: v for k, v in d.items() if not skip(k)} for d in (got, want))
    else:
      want_ = want
    assert got == want_
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-out")]
