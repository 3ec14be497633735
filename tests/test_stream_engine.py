"""The stream engine emits exactly build_samples' rows: every field of every training sample
and evaluation record, in its order, in every mode, through micro-batches of any size."""

import dataclasses

import numpy as np
import pytest

from mcjax import convert
from mcjax.moment import MomentConfig
from mcjax.moment.engine import build_samples
from mcjax.moment.events import Lookup, read_tables
from mcjax.moment.synth import random_log
from mcjax.sim import world
from mcjax.stream.columns import ragged_concat
from mcjax.stream.engine import StreamConfig, StreamEngine
from mcjax.stream.replay import ReplaySource
from mcjax.stream.run import read_oracle
from mcjax.stream.source import Batch
from test_convert import _m3, _sub

MODES = ("realtime", "on_close", "fast_slow")


def stream_tables(tables, cfg, rows, scfg=None):
  """In-memory micro-batches of ``rows`` event rows through the engine; the joined output."""
  t = read_tables(tables)
  side = {"users": t.users, "authors": t.authors, "lives": t.lives, "videos": t.videos}
  oracle = (Lookup.build(t.oracle_exposures, "oracle_exposures", "exposure_id")
            if t.oracle_exposures is not None else None)
  engine = StreamEngine(cfg, scfg, side=side, oracle=oracle)
  n = t.events.num_rows
  batches = (Batch(t.events.slice(lo, rows), [str(i) for i in range(lo, min(lo + rows, n))])
             for lo in range(0, n, rows))
  return _drain(engine, batches)


def stream_replay(log_dir, cfg, rows, scfg=None):
  """The log folder through ``ReplaySource`` (side tables arrive in its first batch)."""
  engine = StreamEngine(cfg, scfg, oracle=read_oracle(log_dir))
  source = ReplaySource(log_dir, batch_rows=rows)
  return _drain(engine, iter(lambda: source.read(), None))


def _drain(engine, batches):
  out = {"train": [], "eval": []}
  for got in [engine.push(b) for b in batches] + [engine.finish()]:
    for split in out:
      if got[split] is not None:
        out[split].append(got[split])
  return {split: ragged_concat(parts) for split, parts in out.items()}, engine


def assert_same(want: dict, got: dict):
  for split in ("train", "eval"):
    assert want[split].keys() == got[split].keys()
    for name in want[split]:
      np.testing.assert_array_equal(got[split][name], want[split][name],
                                    err_msg=f"{split}.{name}")


@pytest.fixture(scope="module")
def random_tables():
  return random_log(400, users=15, lives=3, hours=1, seed=5)


# short watches and histories so that the hour evicts state (exposures, crowd carry, plays)
SHORT = dict(max_watch_s=90, sv_hist_len=3, lv_hist_len=2, fast_window_s=40, slow_window_s=100)
SHORT_STREAM = StreamConfig(exposure_ttl_s=900, prune_every_s=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("features_at", ["exposure", "sample"])
def test_random_log_every_mode_and_batch_size(random_tables, mode, features_at):
  cfg = MomentConfig(mode=mode, features_at=features_at, **SHORT)
  want = build_samples(random_tables, cfg)
  ts = random_tables.events["ts_ms"].to_numpy()
  small = 7 if mode == "realtime" else 98
  assert (ts[small::small] == ts[small - 1:-1:small]).any()  # a batch ends inside one ts_ms
  for rows in (small, 500):
    got, engine = stream_tables(random_tables, cfg, rows, SHORT_STREAM)
    assert_same(want, got)
    assert len(engine.state.x) < 400 and len(engine.state.carry.live)  # state was evicted


def test_one_row_batches(random_tables):
  small = dataclasses.replace(random_tables, events=random_tables.events.slice(0, 250))
  cfg = MomentConfig(**SHORT)
  got, _ = stream_tables(small, cfg, 1, SHORT_STREAM)
  assert_same(build_samples(small, cfg), got)


@pytest.fixture(scope="module", params=["small", "m3like"])
def world_log(request, tmp_path_factory):
  return world.build(str(tmp_path_factory.mktemp("w") / "world"), request.param, 5, users=200,
                     authors=40, hours=4, live_exposures=1500)


@pytest.mark.parametrize("mode", MODES)
def test_simulated_worlds_through_the_replay(world_log, mode):
  cfg = MomentConfig(mode=mode, sv_hist_len=16, lv_hist_len=4)
  got, _ = stream_replay(world_log, cfg, 997)
  assert_same(build_samples(world_log, cfg), got)


def test_a_log_that_starts_mid_stream(world_log, tmp_path):
  """The log cut an hour in: its first rows are events of exposures made before the cut (no
  exposure row in the log); the first micro-batch holds only such orphans (it crashed the
  engine). The engine holds and drops them as the batch engine ignores them: the same
  samples."""
  import pyarrow.compute as pc
  from mcjax.eventlog import io
  from mcjax.eventlog import schema as S
  events = io.read_events(world_log)
  start = int(pc.min(events["ts_ms"]).as_py()) + 3_600_000
  cut = io.write_log(str(tmp_path / "cut"), events.filter(pc.greater_equal(events["ts_ms"],
                                                                           start)),
                     {name: io.read_side(world_log, name) for name in S.SIDE_TABLES})
  t = read_tables(cut)
  first_exposure = int(np.argmax(t.events["event"].to_numpy(zero_copy_only=False)
                                 == S.EXPOSURE))
  assert first_exposure > 0  # orphans first
  n = t.events.num_rows
  edges = [0, first_exposure] + list(range(first_exposure + 997, n, 997)) + [n]
  cfg = MomentConfig(sv_hist_len=16, lv_hist_len=4)
  engine = StreamEngine(cfg, side={"users": t.users, "authors": t.authors, "lives": t.lives,
                                   "videos": t.videos}, oracle=read_oracle(cut))
  got, engine = _drain(engine, (Batch(t.events.slice(lo, hi - lo),
                                      [str(i) for i in range(lo, hi)])
                                for lo, hi in zip(edges, edges[1:])))
  assert engine.state.stats["orphan_events"] >= first_exposure
  assert_same(build_samples(cut, cfg), got)


def stream_redis(url, log_dir, cfg, rows, group):
  """The stream at ``url`` read by a new consumer group of ``RedisSource``."""
  from mcjax.stream.redis_source import RedisSource
  source = RedisSource(url, group=group, batch_rows=rows)
  engine = StreamEngine(cfg, oracle=read_oracle(log_dir))
  got, _ = _drain(engine, iter(lambda: source.read(timeout_s=5.0), None))
  source.close()
  return got


def test_converted_kuailive_m3_log(tmp_path, redis_server):
  from mcjax.stream.publish import publish
  log_dir = str(tmp_path / "log")
  convert.convert_to_log("kuailive_m3", _m3(_sub(tmp_path, "src")), log_dir)
  url = redis_server.url(f"stream-engine-m3-{abs(hash(log_dir))}")
  publish(log_dir, url, batch_rows=2)  # the log through the broker, in 2-row messages
  for mode in MODES:
    cfg = MomentConfig(mode=mode)
    want = build_samples(log_dir, cfg)
    assert len(want["train"]["kind"]) and len(want["eval"]["kind"])
    for rows in (1, 3):
      got, _ = stream_replay(log_dir, cfg, rows)
      assert_same(want, got)
    assert_same(want, stream_redis(url, log_dir, cfg, 3, group=f"m3-{mode}"))


@pytest.mark.parametrize("mode", MODES)
def test_simulated_worlds_through_redis(world_log, redis_server, mode):
  from mcjax.stream.publish import publish
  url = redis_server.url(f"stream-engine-{abs(hash(world_log))}")
  from mcjax.stream.redis_source import connect
  client, stream = connect(url)
  if not client.exists(stream):
    publish(world_log, url, batch_rows=300)  # once per world; each mode reads it anew
  client.close()
  cfg = MomentConfig(mode=mode, sv_hist_len=16, lv_hist_len=4)
  assert_same(build_samples(world_log, cfg), stream_redis(url, world_log, cfg, 997, mode))


def test_requests_read_the_live_state(world_log):
  from mcjax.serve.requests import RequestBuilder
  cfg = MomentConfig(sv_hist_len=16, lv_hist_len=4)
  engine = StreamEngine(cfg)
  source = ReplaySource(world_log, batch_rows=4000)
  for _ in range(6):  # part of the log: the engine's state is where the stream has got to
    engine.push(source.read())
  live = RequestBuilder(engine, cfg)
  whole = RequestBuilder(world_log, cfg)
  rng = np.random.default_rng(0)
  users = rng.choice(engine.state.users, 40)
  lives = rng.choice(engine.state.live_ids, 40)
  q = np.full(40, engine.complete)
  got, want = live.features(users, q, lives), whole.features(users, q, lives)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  version = engine.version
  engine.push(source.read())
  assert engine.version != version and live.context is not whole.context
