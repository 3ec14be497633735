"""The stream engine's door (late, repeated and malformed rows to the dead-letter file) and
launch.stream: the samples folder it writes, and a kill -9 resume that loses and doubles
nothing."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from mcjax.moment import MomentConfig
from mcjax.moment.engine import build_samples
from mcjax.moment.synth import random_log
from mcjax.samples.shards import open_samples
from mcjax.sim import world
from mcjax.stream import rows as rows_lib
from mcjax.stream.columns import ragged_concat
from mcjax.stream.engine import StreamConfig, StreamEngine
from mcjax.stream.source import Batch
from test_stream_engine import assert_same

CFG = MomentConfig(max_watch_s=90, sv_hist_len=3, lv_hist_len=2)


@pytest.fixture(scope="module")
def log():
  return random_log(60, users=6, lives=2, hours=0.25, seed=3)


def _engine(log, tmp_path, scfg=None):
  dead = rows_lib.DeadLetters(str(tmp_path / "dead.jsonl"))
  side = {"users": log.users, "authors": log.authors, "lives": log.lives, "videos": log.videos}
  return StreamEngine(CFG, scfg, side=side, dead=dead), dead


def _run(engine, batches):
  out = {"train": [], "eval": []}
  for got in [engine.push(b) for b in batches] + [engine.finish()]:
    for split in out:
      if got[split] is not None:
        out[split].append(got[split])
  engine.dead.flush()
  return {split: ragged_concat(parts) for split, parts in out.items()}


def _batch(table, first: int):
  return Batch(table, [str(first + i) for i in range(table.num_rows)])


def _lines(tmp_path):
  with open(tmp_path / "dead.jsonl") as f:
    return [json.loads(line) for line in f]


def _without(table, row: int):
  return pa.concat_tables([table.slice(0, row), table.slice(row + 1)])


def test_a_late_event_goes_to_the_dead_letters_not_into_a_window(log, tmp_path):
  ev = log.events
  code = np.asarray(ev["event"].to_pylist())
  late = int(np.flatnonzero(code == "like")[3])  # delivered after everything else
  row = ev.slice(late, 1)
  rest = _without(ev, late)
  engine, _ = _engine(log, tmp_path)
  got = _run(engine, [_batch(rest.slice(i, 50), i) for i in range(0, rest.num_rows, 50)]
             + [Batch(row, ["999999"])])
  assert_same(build_samples(dataclasses.replace(log, events=rest), CFG), got)
  [line] = _lines(tmp_path)
  watermark = int(rest["ts_ms"].to_numpy().max())
  assert line == {"offset": "999999", "row": row.to_pylist()[0],
                  "reason": f"late: ts_ms {row['ts_ms'][0].as_py()} is before the watermark "
                            f"{watermark} (allowed_lateness_s=0.0)"}
  assert engine.dead.counts == {"late_like": 1}


def test_events_within_the_allowed_lateness_are_applied(log, tmp_path):
  ev = log.events
  order = np.arange(ev.num_rows)
  order[10:20] = order[10:20][::-1]  # out of order by a few seconds
  spread = ev["ts_ms"].to_numpy()[order[10:20]]
  lateness = (spread.max() - spread.min()) / 1000 + 1
  engine, _ = _engine(log, tmp_path, StreamConfig(allowed_lateness_s=lateness))
  shuffled = ev.take(order)
  got = _run(engine, [_batch(shuffled.slice(i, 4), i) for i in range(0, ev.num_rows, 4)])
  assert_same(build_samples(log, CFG), got)
  assert _lines(tmp_path) == []


def test_a_row_delivered_twice_is_applied_once(log, tmp_path):
  ev = log.events
  engine, _ = _engine(log, tmp_path)
  batches = [_batch(ev.slice(i, 40), i) for i in range(0, ev.num_rows, 40)]
  got = _run(engine, batches[:3] + [batches[1]] + batches[3:])  # batch 1 redelivered
  assert_same(build_samples(log, CFG), got)
  lines = _lines(tmp_path)
  assert [line["offset"] for line in lines] == [str(i) for i in range(40, 80)]
  assert lines[0] == {"offset": "40", "reason": "offset 40 was already applied",
                      "row": ev.slice(40, 1).to_pylist()[0]}
  assert engine.dead.counts == {"duplicate": 40}


def _bad_rows(ev):
  """Copies of an event row broken one way each, with the validator's reason."""
  good = ev.slice(5, 1).to_pylist()[0]
  watch = dict(good, event="watch_end", domain="live", value=-3.0, exposure_id=10**9)
  early = dict(good, ts_ms=-5, exposure_id=10**9 + 1)
  unknown = dict(good, event="tap", exposure_id=10**9 + 2)
  return [(watch, "event: column 'value': negative watch_end value"),
          (early, "event: column 'ts_ms': negative value"),
          (unknown, "event: column 'event': unknown event (expected one of ['exposure', "
                    "'click', 'watch_end', 'like', 'comment', 'gift', 'follow'])")]


def test_malformed_rows_go_to_the_dead_letters_and_the_stream_goes_on(log, tmp_path):
  ev = log.events
  bad = _bad_rows(ev)
  mixed = pa.concat_tables([ev.slice(0, 30),
                            pa.Table.from_pylist([r for r, _ in bad], schema=ev.schema),
                            ev.slice(30)])
  missing = ev.slice(0, 2).drop_columns(["value"])  # a field missing: both rows refused
  engine, _ = _engine(log, tmp_path)
  got = _run(engine, [Batch(missing, ["1-0", "1-1"])] +
             [Batch(mixed.slice(i, 25), [f"2-{j}" for j in range(i, min(i + 25, mixed.num_rows))])
              for i in range(0, mixed.num_rows, 25)])
  assert_same(build_samples(log, CFG), got)
  lines = _lines(tmp_path)
  missing_reason = ("event: column 'value': missing column (has ['ts_ms', 'user_id', "
                    "'exposure_id', 'domain', 'item_id', 'author_id', 'event'])")
  assert [(l["offset"], l["reason"]) for l in lines] == (
      [("1-0", missing_reason), ("1-1", missing_reason)]
      + [(f"2-{30 + i}", reason) for i, (_, reason) in enumerate(bad)])
  assert lines[2]["row"] == bad[0][0]
  assert engine.dead.counts == {"malformed": 5}


# ---------------------------------------------------------------------------- launch.stream

@pytest.fixture(scope="module")
def world_log(tmp_path_factory):
  return world.build(str(tmp_path_factory.mktemp("w") / "world"), "small", 5, users=200,
                     authors=40, hours=4, live_exposures=1500)


def _launch(log_dir, out, *extra):
  return [sys.executable, "-m", "launch.stream", f"--source=replay:{log_dir}", f"--out={out}",
          "--batch_rows=500", "--part_rows=700", "--config.moment.sv_hist_len=16",
          "--config.moment.lv_hist_len=4", *extra]


def _records(out, split):
  src = open_samples(out, split)
  return src.__getitems__(range(len(src)))


def test_kill_9_and_resume_emit_every_sample_once(world_log, tmp_path):
  cfg = MomentConfig(sv_hist_len=16, lv_hist_len=4)
  want = build_samples(world_log, cfg)
  out = str(tmp_path / "samples")
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  # paced: 4 logged hours in about 8 s, a checkpoint every 0.5 s; killed after the third
  proc = subprocess.Popen(_launch(world_log, out, "--speed=1800", "--checkpoint_s=0.5"),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
  seen = 0
  for line in proc.stdout:
    seen += line.startswith("checkpoint at")
    if seen == 3:
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  with open(os.path.join(out, ".stream", "checkpoint.pkl"), "rb"):
    pass
  done = subprocess.run(_launch(world_log, out), capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed from the checkpoint" in done.stdout
  for split in ("train", "eval"):
    got = _records(out, split)
    for name in want[split]:
      np.testing.assert_array_equal(got[name], want[split][name], err_msg=f"{split}.{name}")
  info = json.load(open(os.path.join(out, "train", "samples_info.json")))
  assert len(info["parts"]) > 2 and info["num_samples"] == len(want["train"]["kind"])


def test_the_output_guard_refuses_before_anything_is_written(tmp_path):
  from mcjax.eventlog.files import OverlapError
  from mcjax.stream.run import check_out, open_source
  log_dir = tmp_path / "log"
  log_dir.mkdir()
  with pytest.raises(OverlapError, match="--out"):
    check_out(str(log_dir / "samples"), {"--source": str(log_dir)}, False)
  other = tmp_path / "notes"
  other.mkdir()
  (other / "mine.txt").write_text("keep")
  with pytest.raises(FileExistsError, match=r"--out=.*notes is not a samples folder"):
    check_out(str(other), {}, True)
  assert (other / "mine.txt").read_text() == "keep"
  with pytest.raises(ValueError, match=r"--source='kafka://x': expected replay:LOG_DIR or "
                     r"redis://host:port/STREAM"):
    open_source("kafka://x")


def test_a_folder_is_resumed_only_with_its_own_config(tmp_path):
  from mcjax.stream.replay import ReplaySource
  from mcjax.stream.run import run
  from test_convert import _m3, _sub
  from mcjax import convert
  log_dir = str(tmp_path / "log")
  convert.convert_to_log("kuailive_m3", _m3(_sub(tmp_path, "src")), log_dir)
  out = str(tmp_path / "samples")
  got = run(ReplaySource(log_dir), out, MomentConfig(), log=lambda line: None)
  want = build_samples(log_dir, MomentConfig())
  assert got["counts"] == {s: len(want[s]["kind"]) for s in ("train", "eval")}
  run(ReplaySource(log_dir), out, MomentConfig(), log=lambda line: None)  # ended: no-op
  for split in ("train", "eval"):
    np.testing.assert_array_equal(_records(out, split)["exposure_id"],
                                  want[split]["exposure_id"])
  with pytest.raises(ValueError, match=r"--out=.*samples holds a stream of another config"):
    run(ReplaySource(log_dir), out, MomentConfig(mode="on_close"), log=lambda line: None)
