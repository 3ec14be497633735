"""The real-time loop: fed by the stream engine (the items of the batch engine's samples, the
labels joined at close), prequential order, whole versions under concurrent reads (in one
process, and between processes written whole or as deltas), versions rebuilt from deltas
bit-identical to the trainer's state, a missing or corrupt delta refused, divergence keeps the
last good version served, kill -9 resume is bit-identical and exactly once, the Redis path end
to end, and ``--compare``'s report section.

One small world (the `tiny` config's), cut to its first few hundred training samples; the
launcher runs in subprocesses (2 host devices, a ("data", "model") = (1, 2) mesh: the tables
row-sharded; a shared compilation cache): once uninterrupted from the replay through the
stream engine (the prequential and exactly-once checks and the reference of the others),
killed and resumed, through Redis with a request load, diverging (on the batch engine's
samples), publishing deltas with every write read back, and with ``--compare``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import config as mcconfig
from mcjax.moment.engine import build_samples
from mcjax.serve import versions as V
from mcjax.train.realtime import PredStore
from mcjax.train import continuous
from mcjax.train.emitted import ReplayEmitted
from xla_flags import FAST_COMPILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ROWS = 400  # the replay is cut where the 400th training sample is emitted


def _tiny():
  cfg = mcconfig.load_config("tiny")
  cfg.realtime.publish_every_steps = 2
  cfg.realtime.publish_every_s = 0.0
  cfg.train.checkpoint_every_steps = 3
  return cfg


def _cut_minutes(samples) -> float:
  first = min(int(samples[k]["sample_ts_ms"][0]) for k in ("train", "eval"))
  return (int(samples["train"]["sample_ts_ms"][TRAIN_ROWS]) - first) / 60_000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """(log folder, samples cut like ``launch.realtime --until_min``, that many minutes)."""
  from launch.realtime import load_samples
  from mcjax.sim import world as world_lib
  root = str(tmp_path_factory.mktemp("realtime"))
  cfg = _tiny()
  log = os.path.join(root, "world")
  world_lib.build(log, cfg.data.preset, cfg.data.world_seed)
  minutes = _cut_minutes(build_samples(log, mcconfig.moment_config(cfg)))
  return log, load_samples(cfg, log, minutes), minutes


@pytest.fixture(scope="module")
def loop_run(world, tmp_path_factory):
  """(metrics.json, workdir) of an uninterrupted launcher run."""
  work = str(tmp_path_factory.mktemp("loop") / "whole")
  done = _launch(world, work)
  assert done.returncode == 0, done.stderr[-3000:]
  return _metrics(work), work


def test_replay_orders_by_emission_with_records_first(world):
  samples = world[1]
  items = ReplayEmitted(samples, tick_ms=1000).items
  assert sum(hi - lo for s, lo, hi, _ in items if s == "train") == len(samples["train"]["kind"])
  assert sum(hi - lo for s, lo, hi, _ in items if s == "eval") == len(samples["eval"]["kind"])
  ticks = [(ms // 1000, s) for s, _, _, ms in items]
  assert ticks == sorted(ticks, key=lambda t: (t[0], t[1] != "eval"))
  # every training sample is emitted after its exposure (what makes records-first prequential)
  t = samples["train"]
  assert np.all(t["sample_ts_ms"] > t["exposure_ts_ms"])


def test_stream_engine_emits_the_batch_samples_items(world):
  """``StreamEmitted`` over a replay of the log (micro-batches of 997 events, cut like
  ``--until_min``) gives ``ReplayEmitted(build_samples)``'s items: same index, split, time and
  every field, the records' labels 0 until joined at close, then equal to the batch labels."""
  from mcjax.stream.replay import ReplaySource
  from mcjax.stream.run import read_oracle
  from mcjax.train.emitted import StreamEmitted
  log, samples, minutes = world
  cfg = _tiny()
  want = list(ReplayEmitted(samples, tick_ms=1000).read())
  stream = StreamEmitted(ReplaySource(log, batch_rows=997), mcconfig.moment_config(cfg),
                         oracle=read_oracle(log), tick_ms=1000,
                         until_ms=int(minutes * 60_000))
  got = list(stream.read())
  assert [(e.index, e.split, e.event_ms) for e in got] == \
      [(e.index, e.split, e.event_ms) for e in want]
  for a, b in zip(want, got):
    for name in a.table:
      if b.split == "eval" and name in ("labels", "label_mask"):
        assert not b.table[name].any()  # not known at exposure time
        continue
      np.testing.assert_array_equal(b.table[name], a.table[name], err_msg=name)
  labels, mask, found = stream.join_labels(samples["eval"]["exposure_id"])
  assert found.all()
  np.testing.assert_array_equal(labels, samples["eval"]["labels"])
  np.testing.assert_array_equal(mask, samples["eval"]["label_mask"])


def test_prequential_order_and_exactly_once(world, loop_run):
  out, work = loop_run
  samples = world[1]
  store = PredStore(os.path.join(work, "preds"))
  store.restore(10**9)
  recs = store.all()
  assert len(recs["exposure_id"]) == len(samples["eval"]["kind"])  # every record, once
  assert sorted(recs["exposure_id"]) == sorted(samples["eval"]["exposure_id"])
  trained = np.load(os.path.join(work, "trained.npz"))
  first_step = {}
  for step, exposure in zip(trained["step"], trained["exposure_id"]):
    first_step[int(exposure)] = min(first_step.get(int(exposure), 10**9), int(step))
  checked = 0
  for exposure, scored_by in zip(recs["exposure_id"], recs["version_step"]):
    if int(exposure) in first_step:  # its samples were trained: only after it was scored
      assert first_step[int(exposure)] > scored_by, (exposure, scored_by)
      checked += 1
  assert checked > 50 and recs["version_step"].max() > 0  # not vacuous
  r = out["realtime"]
  assert r["trained_rows"] == len(samples["train"]["kind"])
  keys = continuous.sample_keys(samples["train"])
  assert r["checksum"] == continuous.checksum(keys)
  assert r["steps"] == len(np.unique(trained["step"]))
  # the batch modes' blocks, which mcjax.report reads
  assert {"overall", "slices", "windows", "ranking"} <= set(out) and out["mode"] == "realtime"
  from mcjax import report
  assert "ctr" in report.metric_table({"realtime": out})
  # versions: every publish measured whole and as changed rows, delta smaller
  later = [h["bytes"] for h in r["versions"][1:]]
  assert later and all(0 < b["delta"] < b["whole"] for b in later)


def _history(n: int) -> list[dict]:
  """Host weights of versions 0..n-1: each sets a few table rows to its number (the rest as
  the version before) and every dense variable: a version mixed from two differs from both."""
  table, out = np.zeros((256, 8), np.float32), []
  for k in range(n):
    table = table.copy()
    table[(k * 7 + np.arange(5)) % 256] = k
    out.append({"tables": {"t": table}, "params": {"w": np.full((32,), k, np.float32)},
                "rest": {"r": np.full((), k, np.int32)}})
  return out


def _same(weights: dict, want: dict) -> bool:
  got = jax.tree.leaves(jax.device_get(weights))
  return all(a.dtype == b.dtype and a.tobytes() == b.tobytes()
             for a, b in zip(got, jax.tree.leaves(want)))


def _hammer(read, history, stop: threading.Event, seen: list, bad: list) -> None:
  while not stop.is_set():
    try:
      v = read()
    except V.VersionError as e:
      bad.append(str(e))
      continue
    if v is None:
      continue
    if not _same(v.weights, history[v.number]):
      bad.append(v.number)
    seen.append(v.number)


@pytest.mark.parametrize("transport", ["in_process", "dir_whole", "dir_delta"])
def test_reader_sees_whole_versions_during_publishes(tmp_path, transport):
  """A reader polling while 60 versions are published sees each version it gets bit for bit,
  never a mix: in one process, and between processes written whole or as deltas (a base every
  4, so it also rebuilds across bases and prunes)."""
  history = _history(60)
  versions, stop, seen, bad = V.Versions(), threading.Event(), [], []
  if transport != "in_process":
    writer = V.DirPublisher(str(tmp_path / "pub"), keep=2, delta=transport == "dir_delta",
                            full_every=4)
    read = V.DirVersions(str(tmp_path / "pub"), jax.tree.map(jnp.asarray, history[0])).poll
  else:
    read = lambda: versions.current  # noqa: E731
  t = threading.Thread(target=_hammer, args=(read, history, stop, seen, bad))
  t.start()
  for n in range(60):
    v = versions.swap(jax.tree.map(jnp.asarray, history[n]), step=n)
    if transport != "in_process":
      writer.write(v)
  stop.set()
  t.join()
  assert not bad, bad[:3]
  assert len(set(seen)) > 1 and seen == sorted(seen)  # saw several, never went back
  if transport == "dir_delta":
    kinds = [h["kind"] for h in writer.history]
    assert kinds == (["base"] + ["delta"] * 3) * 15
    delta = [h["bytes"] for h in writer.history if h["kind"] == "delta"]
    assert max(delta) < min(h["bytes"] for h in writer.history if h["kind"] == "base")


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_missing_or_corrupt_delta_is_refused_naming_the_file(tmp_path, damage):
  """A delta file of the chain of the latest version deleted or changed: ``poll`` refuses it
  with one line naming the file, and the served version stays (a reader that served version 1
  before, and a new reader, which starts from the base)."""
  root = str(tmp_path / "pub")
  history = _history(6)
  like = jax.tree.map(jnp.asarray, history[0])
  versions, writer = V.Versions(), V.DirPublisher(root, keep=6, delta=True, full_every=10)
  early = V.DirVersions(root, like)
  for k in range(6):
    writer.write(versions.swap(jax.tree.map(jnp.asarray, history[k]), step=k))
    if k == 1:
      assert early.poll().number == 1
  path = os.path.join(root, "v_00000003", "delta.npz")
  if damage == "deleted":
    os.remove(path)
  else:
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0xFF]))
  for reader, served in ((early, 1), (V.DirVersions(root, like), None)):
    with pytest.raises(V.VersionError) as e:
      reader.poll()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(path + ": "), msg
    assert ("missing" if damage == "deleted" else "corrupt") in msg
    assert (reader.current.number if reader.current else None) == served
    if served is not None:
      assert _same(reader.current.weights, history[served])


def _env(cache: str) -> dict:
  e = dict(os.environ)
  e.update({"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
            "XLA_FLAGS": " ".join(("--xla_force_host_platform_device_count=2",) + FAST_COMPILE),
            "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "PYTHONPATH": REPO})
  return e


def _launch(world, work: str, *flags: str,
            run=("-m", "launch.realtime")) -> subprocess.CompletedProcess:
  log, _, minutes = world
  argv = [sys.executable, *run, "--config=mcjax/configs/tiny.py",
          f"--workdir={work}", f"--config.data.log_dir={log}", f"--until_min={minutes}",
          "--config.realtime.publish_every_steps=2", "--config.realtime.publish_every_s=0",
          "--config.train.checkpoint_every_steps=3", "--config.mesh.shape=(1,2)",
          "--config.realtime.max_wait_ms=600000", *flags]  # part-filled batches every 10 min
  return subprocess.run(argv, cwd=REPO, env=_env(os.path.join(os.path.dirname(log), "cache")),
                        capture_output=True, text=True, timeout=600)


def _metrics(work: str) -> dict:
  import json
  with open(os.path.join(work, "metrics.json")) as f:
    return json.load(f)


def test_kill9_and_ctrl_c_resume_bit_identical_and_exactly_once(world, loop_run, tmp_path):
  whole, killed = loop_run[1], str(tmp_path / "killed")
  died = _launch(world, killed, "--kill_at_step=5")
  assert died.returncode == -9, died.stderr[-3000:]
  assert not os.path.exists(os.path.join(killed, "metrics.json"))
  # resumed (from step 3), then Ctrl-C after step 5: a checkpoint, metrics and report of what
  # ran, exit status 0; resumed again to the end
  stopped = _launch(world, killed, "--interrupt_at_step=5")
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  assert "stopped at step 5; checkpoint written" in stopped.stdout
  part = _metrics(killed)["realtime"]
  assert part["stopped"] and part["steps"] == 5 and part["steps_this_run"] == 2
  assert os.path.exists(os.path.join(killed, "report.md"))
  resumed = _launch(world, killed)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a, b = _metrics(whole)["realtime"], _metrics(killed)["realtime"]
  assert b["steps_this_run"] < b["steps"] and not b["stopped"]  # it resumed, not restarted
  assert a["state_sha256"] == b["state_sha256"]
  for key in ("steps", "trained_rows", "checksum"):
    assert a[key] == b[key], key
  samples = world[1]
  assert b["trained_rows"] == len(samples["train"]["kind"])
  assert b["checksum"] == continuous.checksum(continuous.sample_keys(samples["train"]))
  assert _metrics(killed)["overall"]["ctr"]["n"] == len(samples["eval"]["kind"])


def test_compare_reports_realtime_on_close_no_crowd(world, tmp_path):
  """``--compare=on_close,no_crowd``: after the run, the same loop with on_close samples and
  without crowd features (``compare/NAME``), and report.md's comparison section: compare.png
  and a rise-delay row per run and the oracle's. An unknown name: one FATAL line, nothing run."""
  import json
  bad = _launch(world, str(tmp_path / "bad"), "--compare=on_close,no_such")
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      "FATAL --compare=on_close,no_such: unknown 'no_such'; expected names among on_close, "
      "no_crowd"], bad.stderr[-3000:]
  assert not os.path.exists(tmp_path / "bad")
  work = str(tmp_path / "cmp")
  got = _launch(world, work, "--compare=on_close,no_crowd",
                "--config.train.checkpoint_every_steps=1000")  # (the checkpoints take time)
  assert got.returncode == 0, got.stderr[-3000:]
  main = _metrics(work)["realtime"]["trained_rows"]
  on_close = _metrics(os.path.join(work, "compare", "on_close"))["realtime"]["trained_rows"]
  assert 0 < on_close < main  # one CLOSE sample per exposure, fewer than the realtime samples
  assert _metrics(os.path.join(work, "compare", "no_crowd"))["realtime"]["trained_rows"] == main
  with open(os.path.join(work, "report.md")) as f:
    section = f.read().split("## Highlight freshness: realtime / on_close / no_crowd\n", 1)[1]
  rows = {line.split("|")[1].strip(): line for line in section.splitlines()
          if line.startswith("| ") and not line.startswith("| scorer")}
  assert set(rows) == {"oracle (p_click)", "realtime", "on_close", "no_crowd"}, section
  assert "![compare](compare.png)" in section
  assert os.path.getsize(os.path.join(work, "compare.png")) > 10_000
  with open(os.path.join(work, "report.json")) as f:
    stats = json.load(f)["compare"]
  assert all(stats[k]["highlights"] >= 1 for k in ("realtime", "on_close", "no_crowd"))


# launch.realtime with every DirPublisher.write followed, in the same process, by two readers
# of the folder (one that keeps polling, so it applies one delta at a time, and a new one that
# starts from the base), each compared bit for bit with the version's weights: the trainer's
# state at that step (``Versions.publish``'s copy).
_CHECKED_WRITES = """
import json, sys
import jax
from absl import app
from mcjax.serve import versions as V
out, log, readers, write = sys.argv.pop(1), [], [], V.DirPublisher.write

def checked(self, v):
  path = write(self, v)
  want = V._flat(jax.device_get(v.weights))
  readers[:1] = readers[:1] or [V.DirVersions(self.root, v.weights)]
  for r in (readers[0], V.DirVersions(self.root, v.weights)):
    got = r.poll()
    same = got.number == v.number and all(
        a.dtype == want[k].dtype and a.tobytes() == want[k].tobytes()
        for k, a in V._flat(jax.device_get(got.weights)).items())
    log.append({"version": v.number, "kind": self.history[-1]["kind"], "same": bool(same)})
  return path

V.DirPublisher.write = checked
from launch import realtime
try:
  app.run(realtime.main)
finally:
  with open(out, "w") as f:
    json.dump(log, f)
"""


def test_delta_versions_rebuild_the_trainers_state_bit_for_bit(world, tmp_path):
  """The loop writing a version after every step as deltas with a base every 3: each version
  read back (incrementally and from its base) is the trainer's state at that step, bit for
  bit; metrics.json and report.md have the bytes each kind took on disk. A base every 0
  versions: one FATAL line before anything runs."""
  import json
  work, pub, checks = str(tmp_path / "loop"), str(tmp_path / "pub"), str(tmp_path / "c.json")
  bad = _launch(world, work, f"--publish_dir={pub}", "--config.realtime.full_every=0")
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      "FATAL invalid config: config.realtime.full_every must be an int >= 1, got 0"], bad.stderr
  got = _launch(world, work, f"--publish_dir={pub}", "--config.realtime.publish_every_steps=1",
                "--config.realtime.publish_delta=True", "--config.realtime.full_every=3",
                "--config.train.checkpoint_every_steps=1000",
                run=("-c", _CHECKED_WRITES, checks))
  assert got.returncode == 0, got.stderr[-3000:]
  with open(checks) as f:
    log = json.load(f)
  r = _metrics(work)["realtime"]
  assert len(log) == 2 * len(r["versions"]) and r["steps"] >= 6
  assert all(c["same"] for c in log), [c for c in log if not c["same"]][:3]
  kinds = [c["kind"] for c in log[::2]]
  assert kinds == (["base", "delta", "delta"] * len(kinds))[:len(kinds)]
  p = r["publish_dir"]
  assert p["delta"] and p["full_every"] == 3 and len(p["versions"]) == len(kinds)
  assert 0 < p["delta_bytes_median"] < p["base_bytes_median"]
  with open(os.path.join(work, "report.md")) as f:
    assert "Written to --publish_dir as deltas with a whole base every 3" in f.read()


def test_divergence_keeps_last_good_version_served(world, tmp_path):
  work, pub = str(tmp_path / "diverge"), str(tmp_path / "pub")
  got = _launch(world, work, f"--publish_dir={pub}", "--inject_nan_at_row=200",
                "--config.realtime.publish_every_steps=1", "--source=batch")
  assert got.returncode == 1, got.stderr[-3000:]
  fatal = [line for line in got.stderr.splitlines() if "FATAL" in line]
  assert len(fatal) == 1 and fatal[0].startswith("FATAL step 7: training diverged: "
                                                 "non-finite learning/loss=nan, loss/"), fatal
  served = V.DirVersions(pub, _served_like(world)).poll()
  assert served.step == 6  # the last good step; the diverged state was never published
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(served.weights))


def test_redis_path_end_to_end(world, loop_run, redis_server, tmp_path):
  """The log published into a real Redis stream (``launch.publish``), the loop reading it
  through the stream engine while a request load is scored against the served versions: the
  same parameters as the replay's run, every record scored, no request dropped."""
  from mcjax.stream.publish import publish
  log, samples, _ = world
  url = redis_server.url("realtime-e2e")
  publish(log, url, batch_rows=512)
  work = str(tmp_path / "redis")
  got = _launch(world, work, f"--source={url}", "--config.realtime.request_rate=50")
  assert got.returncode == 0, got.stderr[-3000:]
  a, out = loop_run[0]["realtime"], _metrics(work)
  b = out["realtime"]
  assert b["source"] == "stream engine" and b["engine"]["counts"]["events_in"] > 0
  assert a["state_sha256"] == b["state_sha256"] and a["checksum"] == b["checksum"]
  assert out["overall"]["ctr"]["n"] == len(samples["eval"]["kind"])
  assert out["overall"]["ctr"]["auc"] == loop_run[0]["overall"]["ctr"]["auc"]
  req = b["requests"]
  assert req["requests"] > 0 and req["dropped"] == 0, req


def _served_like(world) -> dict:
  """A weights tree of the tiny model (shapes and shardings) to load served versions onto."""
  import functools
  from mcjax.model import build_model
  from mcjax.runtime import mesh as mesh_lib, state as state_lib
  cfg = _tiny()
  _, abstract, specs = state_lib.setup(functools.partial(build_model, cfg.model),
                                       state_lib.optim_config(cfg))
  mesh = mesh_lib.make_mesh((1, 2), jax.devices()[:2])
  target = state_lib.abstract_with_shardings(abstract, specs, mesh)
  return {k: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype, device=a.sharding),
                          getattr(target, k)) for k in ("tables", "params", "rest")}


def test_swap_brings_only_counts_to_the_host_until_row_ids_are_asked():
  from mcjax.serve import versions as V
  import jax.numpy as jnp
  table = jnp.zeros((6, 2), jnp.float32)
  w0 = {"tables": {"user": table}, "params": {"w": jnp.ones(3)}, "rest": {}}
  w1 = {"tables": {"user": table.at[jnp.array([1, 4])].set(1.0)}, "params": {"w": jnp.ones(3)},
        "rest": {}}
  vs = V.Versions()
  assert vs.swap(w0, 0).changed is None
  v = vs.swap(w1, 1)
  assert "changed" not in v.__dict__  # no row ids fetched by the swap itself
  assert vs.history[-1]["bytes"]["rows_changed"] == 2
  assert vs.history[-1]["bytes"]["delta"] == 2 * (2 * 4 + 8) + 3 * 4
  np.testing.assert_array_equal(v.changed["tables/user"], [1, 4])
