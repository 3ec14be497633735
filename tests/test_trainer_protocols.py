"""Offline evaluation protocols end to end: a split at an absolute time; train/valid/test with
two epochs, the checkpoint chosen on validation scoring the test, and a run stopped inside
the second epoch that continues to the same end as an uninterrupted one."""

import os

import numpy as np
import pytest
import trainer_fixtures as fx

# On the small world: ~10 train steps an epoch before 40% of the time span, ~1,600 records to
# validate on in [40%, 50%), the rest to test on.
TVT = ("--config.train.mode=offline_tvt", "--config.train.valid_split=0.4",
       "--config.train.offline_split=0.5", "--config.train.log_every_steps=1")


@pytest.fixture(scope="module")
def s(tmp_path_factory):
  return fx.session(tmp_path_factory)


def _best(valid: list, task: str, metric: str) -> dict:
  scored = [r for r in valid if r[task][metric] is not None]
  pick = min if metric == "logloss" else max
  return pick(scored, key=lambda r: r[task][metric])


def test_offline_split_at_an_absolute_time(s):
  ref = fx.load_metrics(fx.short_reference(s))  # split at the default share, 0.8
  at = ref["windows"][0]["start_ms"] - 3_600_000  # an hour earlier
  work = fx.run(s, fx.workdir(s, "split_at"), *fx.SHORT, "--config.train.max_steps=2",
                f"--config.train.offline_split_ts_ms={at}")
  m = fx.load_metrics(work)
  assert [w["start_ms"] for w in m["windows"]] == [at]
  assert m["overall"]["ctr"]["n"] > ref["overall"]["ctr"]["n"]


def test_train_valid_test_two_epochs_and_resume_inside_the_second(s):
  fx.memo_run(s, "tvt_one_epoch", *TVT, block=False)  # side by side
  full = fx.memo_run(s, "tvt_two_epochs", *TVT, "--config.train.epochs=2")
  stopped = fx.workdir(s, "tvt_stopped")
  m_full = fx.load_metrics(full)
  per_epoch = m_full["valid"][0]["step"]
  assert per_epoch >= 4 and [r["step"] for r in m_full["valid"]] == [per_epoch, 2 * per_epoch]
  assert m_full["train"]["steps"] == 2 * per_epoch
  assert m_full["selected"] == _best(m_full["valid"], "ctr", "auc")
  assert str(m_full["selected"]["step"]) in os.listdir(os.path.join(full, "best"))

  # Stopped inside epoch 2: the test is scored with epoch 1's state (the only one validated),
  # exactly what a one-epoch run scores it with.
  fx.run(s, stopped, *TVT, "--config.train.epochs=2",
         f"--config.train.max_steps={per_epoch + per_epoch // 2}")
  m_stopped, m_one = fx.load_metrics(stopped), fx.load_metrics(fx.memo_run(s, "tvt_one_epoch"))
  assert [r["epoch"] for r in m_stopped["valid"]] == [1] == [r["epoch"] for r in m_one["valid"]]
  assert m_stopped["valid"] == m_one["valid"] == m_full["valid"][:1]
  assert m_stopped["selected"]["step"] == per_epoch
  assert m_stopped["overall"] == m_one["overall"]
  assert (m_full["overall"] == m_one["overall"]) == (m_full["selected"]["epoch"] == 1)

  # The same command without the cap continues inside epoch 2 to the uninterrupted end.
  fx.run(s, stopped, *TVT, "--config.train.epochs=2")
  assert fx.comparable(fx.load_metrics(stopped)) == fx.comparable(m_full)
  got, want = fx.load_state(stopped), fx.load_state(full)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
