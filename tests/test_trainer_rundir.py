"""The train launcher and its workdir: a rerun with another config or other data is refused
with one line naming what differs; a larger max_steps (and another cadence) continues the
stopped run; --overwrite replaces only the run's own files; a second live process is refused;
a diverging run stops at once, names the step and the loss term, and writes no metrics.json;
bad numbers are refused before anything runs."""

import fcntl
import json
import os
import shutil

import numpy as np
import pytest
import trainer_fixtures as fx


@pytest.fixture(scope="module")
def s(tmp_path_factory):
  return fx.session(tmp_path_factory)


def test_rerun_refuses_another_config_or_data_continues_and_overwrites(s):
  work = fx.workdir(s, "identity")
  with open(os.path.join(work, "notes.txt"), "w") as f:
    f.write("mine")
  fx.run(s, work, *fx.SHORT, "--config.train.max_steps=2")
  assert fx.load_metrics(work)["train"]["steps"] == 2

  line = fx.run_refused(s, work, *fx.SHORT, "--config.train.max_steps=2",
                        "--config.train.learning_rate=0.01")
  lr = fx.tiny_config().train.learning_rate
  assert f"train.learning_rate ({lr} -> 0.01)" in line and "--overwrite" in line, line
  assert fx.ckpt_steps(work) == [2]  # untouched

  other = os.path.join(s.root, "identity_other_samples")  # the same folder, one time moved
  shutil.copytree(fx.samples_dir(s), other)
  ts_file = os.path.join(other, "train", "sample_ts_ms.npy")
  ts = np.load(ts_file)
  ts[-1] += 1
  np.save(ts_file, ts)
  from mcjax.eventlog import files
  from mcjax.samples import shards
  files.write_manifest(os.path.dirname(ts_file), skip=(shards.HISTORY_DIR,))  # a valid split
  line = fx.run_refused(s, work, *fx.SHORT, "--config.train.max_steps=2", f"--samples={other}")
  assert "data (samples" in line and "train." not in line, line

  # Raising max_steps, and the log and checkpoint cadence, continue the stopped run.
  fx.run(s, work, *fx.SHORT, "--config.train.max_steps=4", "--config.train.log_every_steps=2",
         "--config.train.checkpoint_every_steps=3")
  m = fx.load_metrics(work)["train"]
  assert (m["steps"], m["steps_this_run"]) == (4, 2)

  # --overwrite: a new run of the new config (another seed: the step compiled once is
  # reused); the workdir's other files stay.
  fx.run(s, work, *fx.SHORT, "--config.train.max_steps=2", "--config.seed=1", "--overwrite")
  m = fx.load_metrics(work)["train"]
  assert (m["steps"], m["steps_this_run"]) == (2, 2) and fx.ckpt_steps(work) == [2]
  with open(os.path.join(work, "run.json")) as f:
    assert json.load(f)["config"]["seed"] == 1
  assert open(os.path.join(work, "notes.txt")).read() == "mine"
  assert os.path.islink(os.path.join(work, "samples")) and os.listdir(s.samples)


def test_second_live_process_is_refused(s):
  work = fx.workdir(s, "locked")
  with open(os.path.join(work, ".lock"), "w") as held:  # a live run holds the workdir
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 12345 on elsewhere\n")
    held.flush()
    line = fx.run_refused(s, work, *fx.SHORT, "--config.train.max_steps=1")
  assert "is in use by pid 12345 on elsewhere" in line and ".lock" in line, line
  assert not os.path.exists(os.path.join(work, "ckpt"))


@pytest.mark.parametrize("flag, term", [
    ("--config.train.learning_rate=1e30", "learning/param_norm=inf"),
    ("--config.loss.contrastive_temperature=1e-38", "loss/contrastive=nan"),
])
def test_diverging_run_stops_at_once(s, flag, term):
  work = fx.workdir(s, f"diverges_{term.split('/')[1].split('=')[0]}")
  line = fx.run_refused(s, work, *fx.SHORT, f"--config.train.max_steps={fx.SHORT_STEPS}",
                        "--config.train.checkpoint_every_steps=1", flag)
  assert line.startswith("FATAL step 1: training diverged: non-finite ") and term in line, line
  assert "params/" in line  # the parameters that went non-finite (or the largest one)
  assert not os.path.exists(os.path.join(work, "metrics.json"))
  assert fx.ckpt_steps(work) == []  # no checkpoint of a diverged state


@pytest.mark.parametrize("flag, key", [
    ("--config.train.learning_rate=-1", "config.train.learning_rate"),
    ("--config.train.embedding_learning_rate=0", "config.train.embedding_learning_rate"),
    ("--config.train.weight_decay=-0.1", "config.train.weight_decay"),
    ("--config.train.grad_clip=-1", "config.train.grad_clip"),
    ("--config.train.epochs=2", "config.train.epochs"),  # online: one pass
])
def test_launcher_refuses_bad_numbers(s, flag, key):
  work = os.path.join(s.root, "bad_numbers")
  line = fx.run_refused(s, work, flag, timeout=120)
  assert line.startswith("FATAL invalid config:") and key in line, line
  assert not os.path.exists(work)
