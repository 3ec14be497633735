"""The train launcher end to end: a run killed with SIGKILL and rerun ends exactly like an
uninterrupted one; metrics.json has the documented layout; offline mode runs."""

import glob
import os
import signal
import time

import numpy as np
import pytest
import trainer_fixtures as fx

from mcjax.contract.schema import TASKS

METRIC_KEYS = {"auc", "uauc", "gauc", "logloss", "n"}
SLICES = {"highlight", "non_highlight", "live_sparse", "other"}


@pytest.fixture(scope="module")
def s(tmp_path_factory):
  return fx.session(tmp_path_factory)


def test_resume_after_sigkill_equals_uninterrupted_run(s):
  ref = fx.reference(s)
  work = fx.workdir(s, "killed")
  proc = fx.start(s, work)
  deadline = time.time() + fx.RUN_TIMEOUT_S
  while not [t for t in fx.ckpt_steps(work) if t >= 40]:  # a checkpoint mid-run
    assert proc.poll() is None, f"the run ended before a checkpoint:\n{fx.tail(work + '.log')}"
    assert time.time() < deadline, fx.tail(work + ".log")
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  final = fx.load_metrics(ref)["train"]["steps"]
  assert not os.path.exists(os.path.join(work, "metrics.json"))
  assert fx.ckpt_steps(work)[-1] < final  # killed mid-run, not after the end

  fx.run(s, work)  # the same command again: resumes from the latest checkpoint
  assert fx.comparable(fx.load_metrics(work)) == fx.comparable(fx.load_metrics(ref))
  got, want = fx.load_state(work), fx.load_state(ref)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert fx.ckpt_steps(work)[-1] == final
  # progress files older than the oldest kept checkpoint are pruned with it
  progress = glob.glob(os.path.join(work, "progress", "step_*.json"))
  assert min(int(p[-13:-5]) for p in progress) >= fx.ckpt_steps(work)[0]


def _assert_task_metrics(block: dict, where: str) -> None:
  assert set(block) >= set(TASKS), (where, sorted(block))
  for task in TASKS:
    assert set(block[task]) >= METRIC_KEYS, (where, task, sorted(block[task]))


def test_metrics_json_layout_and_tensorboard(s):
  ref = fx.reference(s)
  m = fx.load_metrics(ref)
  assert set(m) >= {"config", "overall", "slices", "windows"}
  assert m["config"] == "tiny" and m["mode"] == "online"
  _assert_task_metrics(m["overall"], "overall")
  assert set(m["slices"]) == SLICES
  for name, block in m["slices"].items():
    _assert_task_metrics(block, f"slices.{name}")
  assert len(m["windows"]) >= 2
  for w in m["windows"]:
    assert {"start_ms", "end_ms"} <= set(w) and w["start_ms"] < w["end_ms"]
    _assert_task_metrics(w, f"window {w['start_ms']}")
  starts = [w["start_ms"] for w in m["windows"]]
  assert starts == sorted(starts)
  # Every evaluation record is scored exactly once, in one window.
  assert sum(w["ctr"]["n"] for w in m["windows"]) == m["overall"]["ctr"]["n"] > 0
  assert 0.0 <= m["overall"]["ctr"]["auc"] <= 1.0
  # The tiny world has an oracle: the headroom block covers the same click records.
  room = m["headroom"]["overall"]
  assert room["n"] == m["overall"]["ctr"]["n"] and room["auc"] == m["overall"]["ctr"]["auc"]
  assert 0.5 < room["oracle_auc"] <= 1.0 and set(room["learned"]) == {"rest", "affinity",
                                                                      "highlight"}
  assert m["train"]["steps"] > 0
  assert glob.glob(os.path.join(ref, "tb", "events.out.tfevents.*"))


def test_offline_mode(s):
  m = fx.load_metrics(fx.short_reference(s))
  assert m["mode"] == "offline"
  _assert_task_metrics(m["overall"], "overall")
  assert len(m["windows"]) == 1  # the evaluation side of the time split
  assert m["overall"]["ctr"]["n"] > 0
  assert m["train"]["steps"] == fx.SHORT_STEPS


def test_throughput_leaves_out_compile_and_scoring(s):
  ref = fx.reference(s)
  t = fx.load_metrics(ref)["train"]
  perf = {"perf/step_time_s", "perf/examples_per_s", "perf/examples_per_s_per_chip"}
  assert perf <= set(t), sorted(t)
  assert t["steps_this_run"] == t["steps"] and t["timed_steps"] == t["steps"] - 1
  assert t["first_step_s"] + t["scoring_s"] + t["timed_s"] <= t["wall_s"]
  # the first step compiles: it would dominate the step time if it were counted
  assert t["perf/step_time_s"] < t["first_step_s"] / 5
  assert t["perf/examples_per_s"] > t["examples_this_run"] / t["wall_s"]
  assert t["perf/examples_per_s_per_chip"] == t["perf/examples_per_s"]  # one device
  logged = fx.read_scalars(ref, "perf/step_time_s")
  assert sorted(logged) == list(range(10, t["steps"] + 1, 10))  # tiny: log_every_steps=10
  assert max(logged.values()) < t["first_step_s"] / 5


def test_corrupt_checkpoint_resumes_from_the_previous_one(s):
  """256 bytes overwritten inside a state file of the last checkpoint (size unchanged): the
  rerun names the file in one warning line, moves that step aside, resumes from the previous
  checkpoint and ends exactly like the uninterrupted run (not a different model, not a
  "diverged" run)."""
  import shutil
  ref = fx.reference(s)
  work = os.path.join(s.root, "corrupt")
  shutil.copytree(ref, work, symlinks=True)
  steps = fx.ckpt_steps(work)
  assert len(steps) >= 2
  last = os.path.join(work, "ckpt", str(steps[-1]))
  state = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(last, "state")) for n in ns]
  target = max(state, key=os.path.getsize)
  size = os.path.getsize(target)
  with open(target, "r+b") as f:
    f.seek(size // 2)
    f.write(bytes(range(256)))
  assert os.path.getsize(target) == size
  fx.run(s, work)
  log = open(work + ".log").read()
  warned = [line for line in log.splitlines() if "corrupt checkpoint, falling back" in line]
  assert len(warned) == 1 and f"falling back to step {steps[-2]}: {target}: crc32 " in warned[0]
  assert "diverged" not in log
  assert fx.comparable(fx.load_metrics(work)) == fx.comparable(fx.load_metrics(ref))
  got, want = fx.load_state(work), fx.load_state(ref)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert os.listdir(os.path.join(work, "ckpt.corrupt")) == [str(steps[-1])]
