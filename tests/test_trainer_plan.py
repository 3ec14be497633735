"""Time plans (online, offline at a share or an absolute time, train/valid/test) and the run
folder's bookkeeping (identity, lock, --overwrite, atomic writes, checkpoint choice), without
training."""

import fcntl
import json
import os

import jax
import numpy as np
import pytest
import trainer_fixtures as fx

from mcjax.eventlog import files
from mcjax.train import RunError, evaluate
from mcjax.runtime import mesh as mesh_lib
from mcjax.train import plan as plan_lib
from mcjax.train import rundir

# Train samples every 10 ms in [0, 1000), evaluation records every 20 ms in [5, 1005).
TRAIN_TS = np.arange(0, 1000, 10, dtype=np.int64)
EVAL_TS = np.arange(5, 1005, 20, dtype=np.int64)


def _train_cfg(**kw):
  t = fx.tiny_config().train
  t.update(kw)
  return t


def test_offline_split_at_a_share_and_at_an_absolute_time():
  share = plan_lib.make_plan(_train_cfg(mode="offline", offline_split=0.5), EVAL_TS, TRAIN_TS)
  assert share.windows[1].start_ms == 495  # 0 + int(0.5 * 991): the span is [0, 991)
  at = plan_lib.make_plan(_train_cfg(mode="offline", offline_split_ts_ms=300), EVAL_TS,
                          TRAIN_TS)
  train, test = at.windows
  assert (train.train_lo, train.train_hi, train.n_eval) == (0, 30, 0)  # samples < 300 ms
  assert (test.start_ms, test.eval_lo, test.eval_hi, test.n_train) == (300, 15, 50, 0)
  assert at.valid is None and at.epochs == 1


def test_absolute_split_outside_the_data_is_refused():
  with pytest.raises(RunError, match=r"config\.train\.offline_split_ts_ms=5000 is outside"):
    plan_lib.make_plan(_train_cfg(mode="offline", offline_split_ts_ms=5000), EVAL_TS, TRAIN_TS)


def test_train_valid_test_plan():
  p = plan_lib.make_plan(_train_cfg(mode="offline_tvt", valid_split_ts_ms=400,
                                    offline_split_ts_ms=600, epochs=3), EVAL_TS, TRAIN_TS)
  train, test = p.windows
  assert (train.train_lo, train.train_hi, train.n_eval) == (0, 40, 0)  # trains before valid
  assert (p.valid.start_ms, p.valid.end_ms, p.valid.eval_lo, p.valid.eval_hi) == (400, 600,
                                                                                    20, 30)
  assert (test.start_ms, test.eval_lo, test.eval_hi, test.n_train) == (600, 30, 50, 0)
  # 40 samples in batches of 16: 3 steps an epoch, 3 epochs
  assert p.epoch_steps(train, 16) == 3 and p.total_steps(16) == 9
  assert [p.epoch_end(train, s, 16) for s in range(1, 10)] == [None, None, 1, None, None, 2,
                                                                None, None, 3]
  shares = plan_lib.make_plan(_train_cfg(mode="offline_tvt", valid_split=0.4, offline_split=0.6),
                              EVAL_TS, TRAIN_TS)
  assert (shares.valid.start_ms, shares.windows[1].start_ms) == (396, 594)


def test_train_valid_test_plan_refuses_an_empty_or_reversed_validation_period():
  with pytest.raises(RunError, match="no evaluation records to validate on"):
    plan_lib.make_plan(_train_cfg(mode="offline_tvt", valid_split_ts_ms=401,
                                  offline_split_ts_ms=404), EVAL_TS, TRAIN_TS)
  with pytest.raises(RunError, match=r"config\.train\.valid_split"):
    plan_lib.make_plan(_train_cfg(mode="offline_tvt", valid_split_ts_ms=900), EVAL_TS, TRAIN_TS)


def _record(epoch, auc, logloss):
  return {"epoch": epoch, "step": 10 * epoch, "ctr": {"auc": auc, "logloss": logloss}}


@pytest.mark.parametrize("metric, chosen", [("ctr/auc", 2), ("ctr/logloss", 1)])
def test_checkpoint_choice_follows_the_metric(metric, chosen):
  progress = rundir.Progress()
  offers = [progress.offer(r, metric) for r in (_record(1, 0.6, 0.40), _record(2, 0.7, 0.45),
                                                _record(3, None, None))]
  assert progress.best["epoch"] == chosen and offers[2] is False
  assert [r["epoch"] for r in progress.valid] == [1, 2, 3]


def test_run_identity_names_what_differs():
  cfg = fx.tiny_config()
  data = {"sha256": "aaaa", "dir": "/d"}
  a = rundir.identity(cfg, data)
  assert "train.learning_rate" in a["config"] and "train.max_steps" not in a["config"]
  assert not any(k.startswith(("data.", "mesh.")) for k in a["config"])
  cfg.train.max_steps, cfg.train.log_every_steps, cfg.mesh.shape = 7, 3, (2, 1)
  assert rundir.differences(a, rundir.identity(cfg, data)) == []
  lr, cfg.train.learning_rate = cfg.train.learning_rate, 0.5
  got = rundir.differences(a, rundir.identity(cfg, {"sha256": "bbbb", "dir": "/e"}))
  assert got == [f"train.learning_rate ({lr} -> 0.5)",
                 "data (samples aaaa in /d -> bbbb in /e)"]


def test_lock_refuses_a_second_holder(tmp_path):
  with open(tmp_path / ".lock", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(RunError, match=r"is in use by .*\.lock"):
      rundir._take_lock(str(tmp_path))
  f = rundir._take_lock(str(tmp_path))  # released: taken
  assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()}")
  f.close()


def test_overwrite_deletes_only_the_run_files(tmp_path):
  work, inputs = tmp_path / "work", tmp_path / "inputs"
  inputs.mkdir()
  (inputs / "keep.txt").write_text("data")
  for d in ("ckpt/5", "preds", "progress", "world"):
    (work / d).mkdir(parents=True)
  (work / "metrics.json").write_text("{}")
  (work / "notes.txt").write_text("mine")
  os.symlink(inputs, work / "samples")
  os.symlink(inputs, work / "tb")  # a link among the run files: removed, not followed
  cfg = fx.tiny_config()
  ident = rundir.identity(cfg, {"sha256": "aaaa", "dir": str(inputs)})
  rundir.RunDir(str(work), ident, cfg, save_every=5, overwrite=True).close()
  assert sorted(os.listdir(work)) == [".lock", "ckpt", "config.json", "notes.txt", "run.json",
                                      "samples", "world"]
  assert os.listdir(work / "ckpt") == []  # the old checkpoint went; the new run's folder
  assert (inputs / "keep.txt").read_text() == "data"
  assert json.loads((work / "run.json").read_text())["data"]["sha256"] == "aaaa"


def test_atomic_write_leaves_no_partial_file(tmp_path):
  path = str(tmp_path / "f.json")
  files.atomic_write(path, "old")
  files.atomic_write(path, b"new")
  assert open(path).read() == "new" and os.listdir(tmp_path) == ["f.json"]


class _FakeData:
  """Two batches of four evaluation records, as ``evaluate.Evaluator`` reads them."""
  cfg = fx.tiny_config()
  cfg.train.eval_batch_size = 4

  def eval_batches(self, lo, hi):
    return [{"row": np.arange(4)}, {"row": np.arange(4, 8)}]

  def eval_records(self, lo, hi, probs):
    return {"probs": probs}


def test_nonfinite_predictions_are_refused():
  mesh = mesh_lib.make_mesh((1, 1), jax.devices()[:1])
  state = type("State", (), {"step": np.int32(7)})()

  def eval_step(state, batch):
    probs = np.full((4, 6), 0.5, np.float32)
    probs[np.asarray(batch["row"]) == 5] = np.nan
    return probs, {}

  evaluator = evaluate.Evaluator(eval_step, _FakeData(), mesh)
  assert evaluator(state, 0, 4)["probs"].shape == (4, 6)
  with pytest.raises(RunError, match=r"step 7: 1 of 7 predictions of evaluation records "
                                     r"\[0, 7\) are not finite"):
    evaluator(state, 0, 7)
