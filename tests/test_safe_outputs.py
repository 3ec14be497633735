"""No output may overlap an input; --overwrite replaces only a folder of the right kind; a
full disk is named; outputs get normal permissions; staging folders of killed runs are cleaned."""

import errno
import fcntl
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from mcjax import convert
from mcjax.eventlog import files
from mcjax.eventlog import io
from mcjax.eventlog import validate as V
from mcjax.moment import MomentConfig
from mcjax.samples import build

import test_convert as tc
import test_validate as tv

ROOT = tv.ROOT
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _log(tmp_path, name="log") -> str:
  return io.write_log(str(tmp_path / name), *tv._example())


def _snapshot(folder) -> dict:
  """{relative path: bytes} of every file under a folder."""
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      path = os.path.join(root, n)
      out[os.path.relpath(path, folder)] = open(path, "rb").read()
  return out


# ---------------------------------------------------------------------------- overlap

@pytest.mark.parametrize("out,how", [(".", "is the same folder as"), ("sub", "lies inside"),
                                     ("..", "contains")])
def test_build_samples_output_may_not_overlap_the_log(tmp_path, out, how):
  log = _log(tmp_path)
  before = _snapshot(log)
  target = os.path.normpath(os.path.join(log, out))
  with pytest.raises(files.OverlapError, match=f"--out={target} {how} --events={log}"):
    build.build_samples_dir(log, target, MomentConfig(), overwrite=True)
  assert _snapshot(log) == before and V.validate_log(log).rows == 12


def test_build_samples_launcher_refuses_out_equal_to_events(tmp_path):
  log = _log(tmp_path)
  r = subprocess.run([sys.executable, "-m", "launch.build_samples", f"--events={log}",
                      f"--out={log}", "--overwrite"], cwd=ROOT, capture_output=True, text=True,
                     env=ENV)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      f"ERROR: --out={log} is the same folder as --events={log}: an output may not overlap "
      "an input (choose another output folder)")
  assert V.validate_log(log).rows == 12


@pytest.mark.parametrize("out,how", [(".", "is the same folder as"), ("log", "lies inside"),
                                     ("..", "contains")])
def test_convert_output_may_not_overlap_the_source(tmp_path, out, how):
  src = tc._kuailive(tc._sub(tmp_path, "src"))
  before = _snapshot(src)
  target = os.path.normpath(os.path.join(src, out))
  with pytest.raises(files.OverlapError, match=f"--out={target} {how} --src={src}"):
    convert.convert_to_log("kuailive", src, target, overwrite=True)
  assert _snapshot(src) == before


def test_symlinked_output_into_the_input_is_caught(tmp_path):
  log = _log(tmp_path)
  os.symlink(log, tmp_path / "alias")
  with pytest.raises(files.OverlapError, match="is the same folder as"):
    build.build_samples_dir(log, str(tmp_path / "alias"), MomentConfig(), overwrite=True)
  assert V.validate_log(log).rows == 12


def test_convert_overwrite_of_a_file_refuses_cleanly(tmp_path):
  src = tc._kuailive(tc._sub(tmp_path, "src"))
  target = tmp_path / "out.txt"
  target.write_text("keep me")
  r = subprocess.run([sys.executable, "-m", "launch.convert", "--format=kuailive",
                      f"--src={src}", f"--out={target}", "--overwrite"], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 1
  assert r.stderr.strip() == (
      f"ERROR: --out={target} is a file, not an event-log folder; --overwrite only replaces an "
      "event-log folder (remove the file or choose another --out)")
  assert target.read_text() == "keep me"
  assert sorted(os.listdir(tmp_path)) == ["out.txt", "src"]  # no out.txt.old, no staging


def test_overwrite_replaces_only_a_folder_of_the_right_kind(tmp_path):
  other = tmp_path / "notes"
  other.mkdir()
  (other / "todo.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="is not an event-log folder"):
    io.write_log(str(other), *tv._example(), overwrite=True)
  log = _log(tmp_path)
  with pytest.raises(FileExistsError, match="is not a samples folder"):
    build.build_samples_dir(log, str(other), MomentConfig(), overwrite=True)
  assert (other / "todo.txt").read_text() == "mine"
  io.write_log(str(tmp_path / "log"), *tv._example(), overwrite=True)  # a log: replaced
  empty = tmp_path / "empty"
  empty.mkdir()
  build.build_samples_dir(log, str(empty), MomentConfig(), overwrite=True)
  build.build_samples_dir(log, str(empty), MomentConfig(), overwrite=True)  # samples: replaced
  assert sorted(os.listdir(empty)) == [build.BUILD_INFO, "eval", "train"]


# ---------------------------------------------------------------------------- full disk

def test_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
  log = _log(tmp_path)
  out = tmp_path / "samples"

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(np, "save", full)
  with pytest.raises(OSError) as e:
    build.build_samples_dir(log, str(out), MomentConfig())
  assert str(e.value) == f"cannot write samples to {out}: No space left on device"
  assert sorted(os.listdir(tmp_path)) == ["log"]


def _file_size_limit(limit):
  def set_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return set_limit


def test_build_samples_launcher_on_a_full_disk_is_one_line(tmp_path):
  log = _log(tmp_path)
  out = tmp_path / "samples"
  r = subprocess.run([sys.executable, "-m", "launch.build_samples", f"--events={log}",
                      f"--out={out}"], cwd=ROOT, capture_output=True, text=True, env=ENV,
                     preexec_fn=_file_size_limit(2000))
  assert r.returncode == 1
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"ERROR: cannot write samples to {out}: ") and "File too large" in last
  assert sorted(os.listdir(tmp_path)) == ["log"]


# ---------------------------------------------------------------------------- permissions

def test_outputs_get_normal_permissions(tmp_path):
  old = os.umask(0o022)
  try:
    log = _log(tmp_path)
    out = tmp_path / "samples"
    build.build_samples_dir(log, str(out), MomentConfig())
  finally:
    os.umask(old)
  for path in (log, out, out / "train", out / "eval", out / "train" / "history"):
    assert os.stat(path).st_mode & 0o777 == 0o755, path


# ---------------------------------------------------------------------------- killed runs

def _stale(parent, name):
  """A staging folder of a killed run (files inside; no live lock)."""
  path = os.path.join(parent, name)
  os.makedirs(os.path.join(path, "train"))
  open(os.path.join(path, "train", "part"), "w").close()
  return path


def test_staging_folders_of_killed_runs_are_cleaned_but_live_ones_kept(tmp_path):
  log = _log(tmp_path)
  dead_old = _stale(tmp_path, ".tmp-samples-k1ll3d00")  # an older mcjax: no lock file
  dead = _stale(tmp_path, ".tmp-samples-d3ad0000")
  open(dead + ".lock", "w").close()                      # its writer is gone
  live = _stale(tmp_path, ".tmp-samples-l1ve0000")
  mine = _stale(tmp_path, ".tmp-samples-notes")          # not a staging name: never touched
  holder = open(live + ".lock", "w")
  fcntl.flock(holder, fcntl.LOCK_EX)                     # a writer still at work
  try:
    build.build_samples_dir(log, str(tmp_path / "samples"), MomentConfig())
    left = sorted(n for n in os.listdir(tmp_path) if n.startswith("."))
    assert left == [".tmp-samples-l1ve0000", ".tmp-samples-l1ve0000.lock", ".tmp-samples-notes"]
  finally:
    holder.close()
  assert not os.path.exists(dead_old) and not os.path.exists(dead) and os.path.isdir(mine)
  _stale(tmp_path, ".tmp-log2-x0000000")
  io.write_log(str(tmp_path / "log2"), *tv._example())
  assert not os.path.exists(tmp_path / ".tmp-log2-x0000000")
