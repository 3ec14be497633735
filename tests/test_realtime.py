"""The real-time loop: fed by the stream engine (the items of the batch engine's samples, the
labels joined at close), prequential order, whole versions under concurrent reads,
divergence keeps the last good version served, kill -9 resume is bit-identical and exactly
once, and the Redis path end to end.

One small world (the `tiny` config's), cut to its first few hundred training samples; the
launcher runs five times in subprocesses (2 host devices, a ("data", "model") = (1, 2) mesh:
the tables row-sharded; a shared compilation cache): once uninterrupted from the replay
through the stream engine (the prequential and exactly-once checks and the reference of the
others), killed and resumed, through Redis with a request load, and diverging (on the batch
engine's samples)."""

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


def _weights(n: int) -> dict:
  return {"tables": {"t": jnp.full((256, 8), n, jnp.float32)},
          "params": {"w": jnp.full((32,), n, jnp.float32)}, "rest": {"r": jnp.full((), n)}}


def _hammer(read, stop: threading.Event, seen: list, bad: list) -> None:
  while not stop.is_set():
    v = read()
    if v is None:
      continue
    vals = {float(np.asarray(x).flat[0]) for x in jax.tree.leaves(jax.device_get(v.weights))}
    whole = all(np.all(np.asarray(x) == v.number) for x in jax.tree.leaves(v.weights))
    if vals != {float(v.number)} or not whole:
      bad.append((v.number, vals))
    seen.append(v.number)


@pytest.mark.parametrize("between_processes", [False, True])
def test_reader_sees_whole_versions_during_publishes(tmp_path, between_processes):
  versions, stop, seen, bad = V.Versions(), threading.Event(), [], []
  if between_processes:
    writer = V.DirPublisher(str(tmp_path / "pub"), keep=2)
    reader = V.DirVersions(str(tmp_path / "pub"), _weights(0))
    read = reader.poll
  else:
    read = lambda: versions.current  # noqa: E731
  t = threading.Thread(target=_hammer, args=(read, stop, seen, bad))
  t.start()
  for n in range(60):
    v = versions.swap(_weights(n), step=n)
    if between_processes:
      writer.write(v)
  stop.set()
  t.join()
  assert not bad, bad[:3]
  assert len(set(seen)) > 1 and seen == sorted(seen)  # saw several, never went back


def _env(cache: str) -> dict:
  e = dict(os.environ)
  e.update({"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
            "XLA_FLAGS": " ".join(("--xla_force_host_platform_device_count=2",) + FAST_COMPILE),
            "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "PYTHONPATH": REPO})
  return e


def _launch(world, work: str, *flags: str) -> subprocess.CompletedProcess:
  log, _, minutes = world
  argv = [sys.executable, "-m", "launch.realtime", "--config=mcjax/configs/tiny.py",
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
