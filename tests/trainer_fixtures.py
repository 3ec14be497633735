"""Helpers of the trainer tests: one small world and its samples per test session, and the
train launcher run in subprocesses that share one compilation cache.

Every run gets its own workdir whose ``samples`` links to the session's sample cache, and
``--data`` names the session's world, so no run rebuilds them (unless asked to: the
multi-process test checks that process 0 builds them while the other waits). Subprocesses compile with
XLA's cheap CPU backend settings and a persistent compilation cache, so runs of one program
(same config shapes, mesh and device count) compile once per session. Runs that several tests
compare against (``memo_run``) happen once per session.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys
import time

import jax
import numpy as np

from xla_flags import FAST_COMPILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "mcjax/configs/tiny.py"
RUN_TIMEOUT_S = 600
_MEMO: dict = {}


@atexit.register
def _end_background_runs() -> None:
  for value in _MEMO.values():
    if isinstance(value, tuple) and value[1].poll() is None:
      value[1].kill()
      value[1].wait()


@dataclasses.dataclass(frozen=True)
class Session:
  root: str           # the session's folder of runs
  world: str          # event-log folder of the small world
  samples: str        # sample cache root (``cache_dir`` of train_and_evaluate)
  compile_cache: str  # persistent JAX compilation cache of the subprocesses


def tiny_config():
  """The `tiny` named config (mcjax/configs/tiny.py), fresh."""
  from mcjax.config import load_config
  return load_config("tiny")


def session(tmp_path_factory) -> Session:
  """The small world and its tiny-config samples, built once per test session."""
  if "session" not in _MEMO:
    from mcjax.samples.build import ensure_samples
    from mcjax import config as mcconfig
    from mcjax.sim import world
    root = str(tmp_path_factory.mktemp("trainer"))
    cfg = tiny_config()
    s = Session(root, os.path.join(root, "world"), os.path.join(root, "samples"),
                os.path.join(root, "jax_cache"))
    world.build(s.world, cfg.data.preset, cfg.data.world_seed)
    ensure_samples(s.world, s.samples, mcconfig.moment_config(cfg))
    _MEMO["session"] = s
  return _MEMO["session"]


def workdir(s: Session, name: str, shared: bool = True) -> str:
  """A fresh workdir of the session; ``shared``: its samples are the session's cache."""
  path = os.path.join(s.root, name)
  os.makedirs(path)
  if shared:
    os.symlink(s.samples, os.path.join(path, "samples"))
  return path


def env(s: Session, devices: int) -> dict:
  e = dict(os.environ)
  e.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join((f"--xla_force_host_platform_device_count={devices}",)
                            + FAST_COMPILE),
      "JAX_COMPILATION_CACHE_DIR": s.compile_cache,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "PYTHONUNBUFFERED": "1",
  })
  return e


def start(s: Session, work: str, *flags: str, devices: int = 1, log: str | None = None,
          shared: bool = True) -> subprocess.Popen:
  """Starts ``python -m launch.train`` on ``work`` (output to ``log``, default work + .log);
  ``shared``: on the session's world (else the run generates its own into the workdir)."""
  argv = [sys.executable, "-m", "launch.train", f"--config={TINY}", f"--workdir={work}",
          *([f"--config.data.log_dir={s.world}"] if shared else []), *flags]
  out = open(log or work + ".log", "ab")
  try:
    return subprocess.Popen(argv, cwd=REPO, env=env(s, devices), stdout=out,
                            stderr=subprocess.STDOUT)
  finally:
    out.close()


def wait(proc: subprocess.Popen, log: str, timeout: float = RUN_TIMEOUT_S) -> None:
  """Waits for ``proc``; fails with the tail of its log when it did not exit with 0."""
  try:
    rc = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise AssertionError(f"{proc.args} ran over {timeout} s:\n{tail(log)}") from None
  assert rc == 0, f"{proc.args} exited with {rc}:\n{tail(log)}"


def wait_all(procs: list[subprocess.Popen], logs: list[str],
             timeout: float = RUN_TIMEOUT_S) -> None:
  """Waits for processes that work together; when one fails, ends the others (they would
  wait for it forever) and fails with its log."""
  deadline = time.time() + timeout
  try:
    while any(p.poll() is None for p in procs):
      failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
      assert not failed, (f"process {failed[0]} exited with {procs[failed[0]].returncode}:\n"
                          f"{tail(logs[failed[0]])}")
      assert time.time() < deadline, f"ran over {timeout} s:\n{tail(logs[0])}"
      time.sleep(0.2)
    for p, log in zip(procs, logs):
      assert p.returncode == 0, f"{p.args} exited with {p.returncode}:\n{tail(log)}"
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def tail(log: str, chars: int = 4000) -> str:
  with open(log, "rb") as f:
    return f.read().decode(errors="replace").replace("\r", "\n")[-chars:]


def run(s: Session, work: str, *flags: str, devices: int = 1) -> str:
  """Runs the launcher on ``work`` to completion; returns ``work``."""
  wait(start(s, work, *flags, devices=devices), work + ".log")
  return work


def run_refused(s: Session, work: str, *flags: str, timeout: float = RUN_TIMEOUT_S) -> str:
  """Runs the launcher on ``work`` expecting it to fail; returns its one ``FATAL`` line
  (fails when it exits with 0, prints a traceback or not exactly one FATAL line)."""
  log = f"{work}.refused.log"
  if os.path.exists(log):
    os.remove(log)
  proc = start(s, work, *flags, log=log)
  try:
    rc = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise AssertionError(f"{proc.args} ran over {timeout} s:\n{tail(log)}") from None
  out = tail(log, 100_000)
  fatal = [line for line in out.splitlines() if line.startswith("FATAL")]
  assert rc != 0 and len(fatal) == 1 and "Traceback" not in out, (rc, tail(log))
  return fatal[0]


def samples_dir(s: Session) -> str:
  """The session's samples folder (inside the sample cache)."""
  (path,) = glob.glob(os.path.join(s.samples, "*", "build_info.json"))
  return os.path.dirname(path)


def memo_run(s: Session, name: str, *flags: str, devices: int = 1,
             block: bool = True) -> str:
  """``run`` in a fresh workdir ``name``, once per session; returns the workdir. With
  ``block=False`` the run starts in the background and a later call waits for it."""
  if name not in _MEMO:
    work = workdir(s, name)
    _MEMO[name] = (work, start(s, work, *flags, devices=devices))
  work, proc = _MEMO[name]
  if block:
    wait(proc, work + ".log")
  return work


def reference(s: Session) -> str:
  """The tiny config, one device, uninterrupted, to the end of the data."""
  return memo_run(s, "reference")


SHORT_STEPS = 20
# Short runs: offline (train on the first 80% of time, then score the rest), every step's
# losses logged, stopped after SHORT_STEPS steps unless a run gives its own max_steps.
SHORT = ("--config.train.mode=offline", "--config.train.log_every_steps=1")


def short_reference(s: Session, block: bool = True) -> str:
  """SHORT on one device for SHORT_STEPS steps."""
  return memo_run(s, "short_reference", *SHORT, f"--config.train.max_steps={SHORT_STEPS}",
                  block=block)


def event_files(work: str) -> list[str]:
  """TensorBoard event files of ``work``, oldest first (a resumed run adds one)."""
  return sorted(glob.glob(os.path.join(work, "tb", "events.out.tfevents.*")),
                key=os.path.getmtime)


def read_scalars(work: str, tag: str, *, newest_only: bool = False) -> dict[int, float]:
  """{step: value} of one TensorBoard scalar of ``work/tb`` (later event files win)."""
  from tensorboardX.proto import event_pb2
  out = {}
  files = event_files(work)
  for path in files[-1:] if newest_only else files:
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: length, crc, payload, crc
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 16 + n
      for v in event.summary.value:
        if v.tag == tag:
          out[int(event.step)] = float(v.simple_value)
  return out


def load_metrics(work: str) -> dict:
  with open(os.path.join(work, "metrics.json")) as f:
    return json.load(f)


def comparable(m: dict) -> dict:
  """metrics.json without what depends on the wall clock (kept: the step count)."""
  return {**m, "train": {"steps": m["train"]["steps"]}}


def ckpt_steps(work: str) -> list[int]:
  """Finished checkpoint steps under ``work/ckpt``."""
  d = os.path.join(work, "ckpt")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def load_state(work: str, step: int | None = None) -> dict[str, np.ndarray]:
  """The train state of a checkpoint (default: the latest) as {path: host array}."""
  import orbax.checkpoint as ocp
  step = ckpt_steps(work)[-1] if step is None else step
  path = os.path.join(work, "ckpt", str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
  state = ckptr.restore(path, target)
  ckptr.close()
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def assert_states_close(a: dict, b: dict, *, rtol: float, atol: float) -> None:
  assert a.keys() == b.keys()
  bad = [k for k in a if not np.allclose(a[k], b[k], rtol=rtol, atol=atol)]
  worst = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in bad[:5]}
  assert not bad, f"{len(bad)} of {len(a)} arrays differ, e.g. (max abs diff) {worst}"


def assert_metrics_close(a, b, *, rtol: float, atol: float, path: str = "metrics") -> None:
  """Same keys and structure; numbers within tolerance; other values equal."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys(), (path, sorted(a), sorted(b))
    for k in a:
      assert_metrics_close(a[k], b[k], rtol=rtol, atol=atol, path=f"{path}.{k}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      assert_metrics_close(x, y, rtol=rtol, atol=atol, path=f"{path}[{i}]")
  elif isinstance(a, float) and isinstance(b, (int, float)):
    assert np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True), (path, a, b)
  else:
    assert a == b, (path, a, b)
