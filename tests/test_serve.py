"""Scoring (mcjax.serve): requests get the engine's features, a restored checkpoint scores them
with evaluation's forward pass, nothing recompiles across request sizes, and the exported
StableHLO scorer gives the same scores in a process that has only jax and numpy.
"""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import trainer_fixtures as tf
from mcjax.eventlog import schema as ES
from mcjax.moment import MomentConfig
from mcjax.moment.engine import SampleBuilder
from mcjax.moment.events import LogTables
from mcjax.moment.synth import random_log
from mcjax.contract import schema
from mcjax.contract import batch as batch_lib
from mcjax.serve import EventBuffer, RequestBuilder, Scorer, export
from mcjax.contract.batch import host_batch
from xla_flags import FAST_COMPILE

SV, LV = 12, 6
BUCKETS = (8, 64)
ONE_DEVICE = jax.devices()[:1]


def _device_inputs(table: dict) -> dict:
  """A sample table -> its model inputs as a device receives them (the trainer's path)."""
  device = host_batch(batch_lib.pad_table(table, SV, LV))
  return {k: device[k] for k in schema.MODEL_INPUTS}


def _live_exposures(ev: pa.Table) -> dict:
  """exposure_id, user_id, ts_ms, item_id of the live exposure events of an event table."""
  ev = ev.filter(pc.and_(pc.equal(ev["event"], ES.EXPOSURE), pc.equal(ev["domain"], ES.LIVE)))
  return {c: ev[c].to_numpy() for c in ("exposure_id", "user_id", "ts_ms", "item_id")}


def _rows_of(exposures: dict, exposure_id: np.ndarray) -> dict:
  order = np.argsort(exposures["exposure_id"])
  pos = order[np.searchsorted(exposures["exposure_id"], exposure_id, sorter=order)]
  assert np.array_equal(exposures["exposure_id"][pos], exposure_id)
  return {k: v[pos] for k, v in exposures.items()}


@pytest.fixture(scope="module")
def log():
  """A synthetic log whose lives.parquet lacks one live (author and start from the log)."""
  tables = random_log(3000, users=40, lives=6, hours=2, seed=3)
  lives = tables.lives
  dropped = lives["live_id"].to_numpy()[0]
  keep = pc.not_equal(lives["live_id"], dropped)
  return LogTables(tables.events, tables.users, tables.authors, lives.filter(keep),
                   tables.videos), dropped


def test_request_inputs_equal_evaluation_record_inputs(log):
  """A request (user, exposure time, live) built from the raw log gives the model exactly its
  evaluation record's inputs, also for a live missing from lives.parquet."""
  tables, dropped = log
  cfg = MomentConfig(sv_hist_len=SV, lv_hist_len=LV)
  records = next(SampleBuilder(tables, cfg).tables("eval"))
  expected = _device_inputs(records)
  raw = _rows_of(_live_exposures(tables.events), records["exposure_id"])
  builder = RequestBuilder(tables, cfg)
  got = builder.batch(raw["user_id"], raw["ts_ms"], raw["item_id"])
  assert set(got) == set(schema.MODEL_INPUTS)
  assert (raw["item_id"] == dropped).sum() > 10 and got["sv_len"].max() and got["lv_len"].max()
  for name in schema.MODEL_INPUTS:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
  # one user, one time, several candidates: broadcast like separate rows
  one = builder.batch(raw["user_id"][5], raw["ts_ms"][5], raw["item_id"][:3])
  rows = builder.batch(np.repeat(raw["user_id"][5], 3), np.repeat(raw["ts_ms"][5], 3),
                       raw["item_id"][:3])
  for name in schema.MODEL_INPUTS:
    np.testing.assert_array_equal(one[name], rows[name], err_msg=name)
  assert builder.unseen([raw["user_id"][0], -7], [dropped, -8, -9]) == {"users": 1, "lives": 2}
  lo, hi = builder.time_range
  assert builder.outside([lo - 1, lo, hi, hi + 1, hi + 2]) == (1, 2)


def test_event_buffer_sees_what_the_log_sees(log):
  """An EventBuffer fed in pieces (out of order) gives a log folder's features; a request at
  q sees the same with or without the events at and after q (causality)."""
  tables, _ = log
  cfg = MomentConfig(sv_hist_len=SV, lv_hist_len=LV)
  ts = tables.events["ts_ms"].to_numpy()
  raw = _live_exposures(tables.events)
  pick = np.random.default_rng(0).choice(len(raw["ts_ms"]), 200, replace=False)
  q, user, live = raw["ts_ms"][pick], raw["user_id"][pick], raw["item_id"][pick]
  full = RequestBuilder(tables, cfg).batch(user, q, live)

  cut = np.quantile(ts, 0.6)
  early = tables.events.filter(pa.array(ts < cut))
  late = tables.events.filter(pa.array(ts >= cut))
  buffer = EventBuffer(LogTables(early, tables.users, tables.authors, tables.lives,
                                 tables.videos))
  builder = RequestBuilder(buffer, cfg)
  before = q < cut
  partial = builder.batch(user[before], q[before], live[before])
  for name in schema.MODEL_INPUTS:  # events after q are not needed
    np.testing.assert_array_equal(partial[name], full[name][before], err_msg=name)
  half = len(late) // 2
  buffer.append(late.slice(half))
  buffer.append({c: late.slice(0, half)[c] for c in late.column_names})
  assert buffer.num_events == len(ts) and buffer.repeated == 0
  # at-least-once delivery: a re-sent piece (and a row repeated inside one append) counts once
  buffer.append(pa.concat_tables([late.slice(half, 50), early.slice(0, 3), early.slice(0, 1)]))
  assert buffer.num_events == len(ts) and buffer.repeated == 54
  now = builder.batch(user, q, live)
  for name in schema.MODEL_INPUTS:
    np.testing.assert_array_equal(now[name], full[name], err_msg=name)
  # side rows: a new live's category and author become visible after an append
  new_live = {"live_id": [10**12], "author_id": [tables.lives["author_id"][0].as_py()],
              "category": [3], "start_ms": [int(q[0]) - 60_000], "end_ms": [int(q[0]) + 1]}
  assert builder.unseen([user[0]], [10**12])["lives"] == 1
  buffer.append(lives=new_live)
  got = builder.batch(user[0], q[0], [10**12])
  assert got["live_category"][0] == 3 and builder.unseen([user[0]], [10**12])["lives"] == 0
  with pytest.raises(ValueError, match="appended events: missing column"):
    buffer.append({"ts_ms": [1]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(session, workdir) of the short tiny run: offline, 20 steps, window 1 scored after."""
  s = tf.session(tmp_path_factory)
  return s, tf.short_reference(s)


@pytest.fixture(scope="module")
def scorer(trained):
  s, work = trained
  return Scorer.from_workdir(work, log=s.world, devices=ONE_DEVICE, buckets=BUCKETS)


def test_scores_equal_evaluation_predictions(trained, scorer):
  """Scores built from the raw event log at each exposure time equal the trainer's evaluation
  predictions of the same checkpoint (preds/window_00001.npz, scored after the last step)."""
  s, work = trained
  assert scorer.step == tf.SHORT_STEPS
  with np.load(os.path.join(work, "preds", "window_00001.npz")) as z:
    preds = dict(z)
  events = pq.read_table(os.path.join(s.world, ES.EVENTS_FILE))
  raw = _rows_of(_live_exposures(events), preds["exposure_id"])
  assert len(raw["ts_ms"]) > 1000
  probs, score = scorer.score_batch(scorer.requests.batch(raw["user_id"], raw["ts_ms"],
                                                          raw["item_id"]))
  assert np.abs(probs - preds["probs"]).max() <= 1e-6
  # score(): one request, its logged live among other candidates, ranked
  i = int(np.argmax(preds["probs"][:, 0]))
  others = np.setdiff1d(raw["item_id"][:20], raw["item_id"][i])
  ranked = scorer.score(raw["user_id"][i], raw["ts_ms"][i], np.r_[others, raw["item_id"][i]])
  assert np.all(np.diff(ranked.ranking_score) <= 0)
  at = np.flatnonzero(ranked.live_ids == raw["item_id"][i])[0]
  assert np.abs(ranked.probs[at] - preds["probs"][i]).max() <= 1e-6
  assert np.allclose(ranked.ranking_score[at],
                     np.prod(preds["probs"][i] ** np.array([1.0, 0.5, 0.1, 0.1, 0.2, 0.1])),
                     rtol=1e-5)
  with pytest.raises(ValueError, match="before the event log's first event"):
    scorer.score(raw["user_id"][i], 0, [1])


def test_no_recompiles_across_candidate_counts(scorer, trained):
  """After warmup, requests of any size reuse the compiled buckets."""
  s, _ = trained
  scorer.warmup()
  compiled = scorer._jit._cache_size()
  assert compiled == len(BUCKETS)
  messages = []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  jax_logger = logging.getLogger("jax")
  jax_logger.addHandler(handler)
  jax.config.update("jax_log_compiles", True)
  try:
    lo, hi = scorer.requests.time_range
    for n in (1, 7, 8, 9, 64, 65, 130):
      ranked = scorer.score(3, (lo + hi) // 2 + n, np.arange(n) + 1)
      assert len(ranked.live_ids) == n
  finally:
    jax.config.update("jax_log_compiles", False)
    jax_logger.removeHandler(handler)
  assert scorer._jit._cache_size() == compiled
  assert not [m for m in messages if "ompil" in m], messages


def test_export_round_trip_in_a_jax_only_process(trained, scorer, tmp_path):
  """launch/export.py -> a subprocess that imports only jax and numpy scores like the Scorer."""
  s, work = trained
  out = str(tmp_path / "export")
  done = subprocess.run(
      [sys.executable, "-m", "launch.export", f"--workdir={work}", f"--out={out}",
       f"--buckets={','.join(map(str, BUCKETS))}"],
      cwd=tf.REPO, env=tf.env(s, 1), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  lo, hi = scorer.requests.time_range
  batch = scorer.requests.batch(np.arange(70) % 9, lo + (np.arange(70) * (hi - lo)) // 70,
                                np.arange(70) % 13)
  np.savez(tmp_path / "batch.npz", **batch)
  code = (
      "import runpy, sys\nimport numpy as np\n"
      f"score = runpy.run_path({os.path.join(out, export.LOADER)!r})['load_exported']({out!r})\n"
      f"batch = dict(np.load({str(tmp_path / 'batch.npz')!r}))\n"
      "probs, ranking = score(batch)\n"
      f"np.savez({str(tmp_path / 'out.npz')!r}, probs=probs, ranking=ranking)\n"
      "assert not [m for m in sys.modules if m.split('.')[0] in ('mcjax', 'flax', 'pyarrow')]\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(FAST_COMPILE))
  done = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as z:
    probs, ranking = z["probs"], z["ranking"]
  want_probs, want_ranking = scorer.score_batch(batch)
  assert np.abs(probs - want_probs).max() <= 1e-6
  assert np.abs(ranking - want_ranking).max() <= 1e-6
  with open(os.path.join(out, export.META)) as f:
    assert json.load(f)["buckets"] == list(BUCKETS)


def test_export_replaces_an_older_export_whole(scorer, tmp_path):
  """An existing export is replaced only with overwrite, and whole: no stale bucket file of
  the older export stays beside the new one."""
  out = str(tmp_path / "export")
  export.export(scorer, out, buckets=(8,))
  with open(os.path.join(out, "score_999.bin"), "wb") as f:
    f.write(b"stale")
  with pytest.raises(FileExistsError, match=r"already exists \(pass --overwrite"):
    export.export(scorer, out, buckets=(8,))
  export.export(scorer, out, buckets=(8,), overwrite=True)
  assert sorted(os.listdir(out)) == sorted([export.LOADER, export.META, export.WEIGHTS,
                                            "score_8.bin"])
  assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_checkpoint_from_a_2x4_mesh_scores_on_one_device(tmp_path):
  """A state written on a (2, 4) mesh restores bit-exactly onto one device and onto the same
  mesh, and both score alike."""
  import functools
  from mcjax.model import build_model
  from mcjax.runtime import checkpoint, mesh as mesh_lib, state as state_lib
  cfg = tf.tiny_config()
  mesh = mesh_lib.make_mesh((2, 4))
  _, state, _ = state_lib.create_train_state(
      functools.partial(build_model, cfg.model), mesh, state_lib.optim_config(cfg), seed=3)
  assert not state.tables["tables"]["user"].sharding.is_fully_replicated
  with checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False) as ckpt:
    ckpt.save(7, state, force=True)
    ckpt.wait_until_finished()
  (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
  one = Scorer.from_workdir(str(tmp_path), devices=ONE_DEVICE, buckets=(8,))
  grid = Scorer.from_workdir(str(tmp_path), mesh_shape=(2, 4), buckets=(8,))
  assert one.step == grid.step == 7 and grid.mesh.shape == {"data": 2, "model": 4}
  table = one.weights["tables"]["tables"]["user"]
  assert len(table.sharding.device_set) == 1
  np.testing.assert_array_equal(np.asarray(table), np.asarray(state.tables["tables"]["user"]))
  m = cfg.moment
  dummy = host_batch(schema.dummy_batch(8, m.sv_hist_len, m.lv_hist_len, seed=1))
  batch = {k: dummy[k] for k in schema.MODEL_INPUTS}
  p1, s1 = one.score_batch(batch)
  p8, s8 = grid.score_batch(batch)
  assert np.abs(p1 - p8).max() <= 1e-6 and np.abs(s1 - s8).max() <= 1e-6


def _score_cli(s, work: str, requests: str, out: str):
  argv = [sys.executable, "-m", "launch.score", f"--workdir={work}", f"--log={s.world}",
          f"--requests={requests}", f"--out={out}"]
  return subprocess.run(argv, cwd=tf.REPO, env=tf.env(s, 1), capture_output=True, text=True,
                        timeout=300)


def test_launch_score(trained, scorer, tmp_path):
  """launch/score.py ranks each request's candidates; unknown ids are scored and counted;
  requests after the log warn, before it refuse; a missing checkpoint is one line."""
  s, work = trained
  lo, hi = scorer.requests.time_range
  live = np.unique(scorer.requests.context.live_id)[:4]
  user = scorer.requests.context.user[:1]
  req = {"request_id": [1, 1, 1, 1, 2, 2, 2], "user_id": [user[0]] * 4 + [10**12 + 5] * 3,
         "ts_ms": [hi - 1000] * 4 + [hi + 5000] * 3,
         "live_id": list(live) + [live[0], 10**12 + 6, 10**12 + 7]}
  pq.write_table(pa.table({k: np.asarray(v, np.int64) for k, v in req.items()}),
                 tmp_path / "req.parquet")
  done = _score_cli(s, work, str(tmp_path / "req.parquet"), str(tmp_path / "out.parquet"))
  assert done.returncode == 0, done.stderr[-3000:]
  assert ("unseen ids (scored with hashed ids, side features -1): 1 of 2 users, 2 of "
          in done.stdout)
  assert "WARNING 3 of 7 row(s) have ts_ms after the last event" in done.stdout
  out = pq.read_table(tmp_path / "out.parquet").to_pydict()
  assert out["request_id"] == [1, 1, 1, 1, 2, 2, 2] and out["rank"] == [0, 1, 2, 3, 0, 1, 2]
  assert all(a >= b for a, b in zip(out["ranking_score"][:3], out["ranking_score"][1:4]))
  probs, score = scorer.score_batch(scorer.requests.batch(req["user_id"], req["ts_ms"],
                                                          req["live_id"]))
  for r, l, got in zip(out["request_id"], out["live_id"], out["p_ctr"]):
    i = [j for j in range(7) if req["request_id"][j] == r and req["live_id"][j] == l][0]
    assert abs(got - probs[i, 0]) <= 1e-6

  req["ts_ms"][:4] = [lo - 1] * 4  # request 1 (one time per request)
  pq.write_table(pa.table({k: np.asarray(v, np.int64) for k, v in req.items()}),
                 tmp_path / "early.parquet")
  done = _score_cli(s, work, str(tmp_path / "early.parquet"), str(tmp_path / "x.parquet"))
  assert done.returncode != 0
  assert done.stderr.strip().splitlines()[-1].startswith(
      "FATAL --requests: 4 row(s) have ts_ms before the first event of --log")
  (tmp_path / "untrained").mkdir()
  with open(os.path.join(work, "config.json")) as f:
    (tmp_path / "untrained" / "config.json").write_text(f.read())
  done = _score_cli(s, str(tmp_path / "untrained"), str(tmp_path / "req.parquet"),
                    str(tmp_path / "y.parquet"))
  assert done.returncode != 0
  assert done.stderr.strip().splitlines()[-1] == (
      f"FATAL workdir {tmp_path / 'untrained'}: no checkpoint (ckpt/ is missing)")


def test_serve_bench_runs(trained):
  """benchmarks/serve_bench.py on the short run (its numbers are not checked, only its keys)."""
  from benchmarks import serve_bench
  s, work = trained
  result = serve_bench.run(work, s.world, candidates=5, requests=3, batch_rows=70,
                           buckets=BUCKETS)
  for key in ("request_from_buffer", "request_prebuilt"):
    assert result[key]["n"] == 3 and result[key]["p99_ms"] >= result[key]["p50_ms"] > 0
  assert result["batch"]["rows"] == 70 and result["refresh"]["rebuild_s"] > 0
  assert "candidates/s" in serve_bench.table(result)


def test_scored_example_ranks_the_lives_on_air_inside_a_highlight(trained):
  """The run report's example: a request mid-highlight, candidates the lives on air (the
  highlight's live among them, marked), ranked by Ranking_Score, rendered by the report."""
  from mcjax import report
  from mcjax.serve.example import highlight_request, scored_example
  s, work = trained
  req = highlight_request(s.world)
  assert req is not None and req.highlight_live in req.live_ids
  start, end, _ = req.highlight
  assert start <= req.ts_ms < end
  assert req.in_highlight[list(req.live_ids).index(req.highlight_live)]
  lives = pq.read_table(os.path.join(s.world, "lives.parquet")).to_pydict()
  on_air = {l for l, a, b in zip(lives["live_id"], lives["start_ms"], lives["end_ms"])
            if a <= req.ts_ms < b}
  assert set(req.live_ids.tolist()) <= on_air
  ex = scored_example(work, s.world, k=5)
  json.dumps(ex)  # goes into the report as is
  scores = [r["score"] for r in ex["top"]]
  assert scores == sorted(scores, reverse=True) and len(ex["top"]) == min(5, ex["n"])
  assert 1 <= ex["highlight_rank"] <= ex["n"]
  text = "\n".join(report.example_section(ex))
  assert f"live {ex['highlight_live']}" in text and "Ranking_Score" in text
  assert highlight_request(s.world, after_ms=2**62) is None


def test_kill_9_of_score_and_export_leaves_no_part(trained, scorer, tmp_path):
  """score and export killed at random points (importing, restoring, scoring, writing) leave
  no --out (or the whole one); a rerun writes what the Scorer computes in this process."""
  import random
  import signal
  import time
  from flax import traverse_util
  s, work = trained
  _, hi = scorer.requests.time_range
  live = np.unique(scorer.requests.context.live_id)[:3]
  req = {"request_id": [1, 1, 1], "user_id": [1, 1, 1], "ts_ms": [hi - 1000] * 3,
         "live_id": list(live)}
  pq.write_table(pa.table({k: np.asarray(v, np.int64) for k, v in req.items()}),
                 tmp_path / "req.parquet")
  probs, _ = scorer.score_batch(scorer.requests.batch(req["user_id"], req["ts_ms"],
                                                      req["live_id"]))
  want_ctr = dict(zip(req["live_id"], probs[:, 0]))
  flat = traverse_util.flatten_dict(jax.device_get(scorer.weights))
  want_weights = {"/".join(map(str, k)): np.asarray(v) for k, v in flat.items()}

  def score_ok(out):
    got = pq.read_table(out).to_pydict()
    assert sorted(got["live_id"]) == sorted(req["live_id"])
    for l, p in zip(got["live_id"], got["p_ctr"]):
      assert abs(p - want_ctr[l]) <= 1e-6

  def export_ok(out):
    assert sorted(os.listdir(out)) == sorted([export.LOADER, export.META, export.WEIGHTS,
                                              "score_8.bin"])
    with np.load(os.path.join(out, export.WEIGHTS)) as z:
      assert sorted(z.files) == sorted(want_weights)
      for k in z.files:
        np.testing.assert_array_equal(z[k], want_weights[k], err_msg=k)

  runs = {
      "score": (["launch.score", f"--workdir={work}", f"--log={s.world}",
                 f"--requests={tmp_path / 'req.parquet'}"], score_ok),
      "export": (["launch.export", f"--workdir={work}", "--buckets=8"], export_ok)}
  rng = random.Random(3)
  for name, (argv, check) in runs.items():
    out = str(tmp_path / name)
    proc = subprocess.Popen([sys.executable, "-m", *argv, f"--out={out}"], cwd=tf.REPO,
                            env=tf.env(s, 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(1.0, 8.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if os.path.exists(out):  # killed after the rename: whole
      check(out)
    done = subprocess.run([sys.executable, "-m", *argv, f"--out={out}",
                           *(["--overwrite"] if os.path.exists(out) else [])],
                          cwd=tf.REPO, env=tf.env(s, 1), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check(out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(f".tmp-{name}-")]
