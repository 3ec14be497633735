"""Two processes on localhost (``jax.distributed.initialize``, gloo collectives, 2 host
devices each) generate the small world and its samples (process 0 builds, process 1 waits),
then train on it together like one process with the same global batch."""

import os

import portpicker
import pytest
import trainer_fixtures as fx

LOSS = "learning/loss"


@pytest.fixture(scope="module")
def s(tmp_path_factory):
  return fx.session(tmp_path_factory)


def test_two_processes_train_like_one(s):
  fx.short_reference(s, block=False)  # side by side with the two processes
  work = fx.workdir(s, "two_processes", shared=False)
  port = portpicker.pick_unused_port()
  logs = [f"{work}.{i}.log" for i in range(2)]
  procs = [fx.start(s, work, *fx.SHORT, f"--config.train.max_steps={fx.SHORT_STEPS}",
                    f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}", devices=2, log=logs[i], shared=False)
           for i in range(2)]
  fx.wait_all(procs, logs)
  assert os.path.isdir(os.path.join(work, "world"))
  assert len(fx.event_files(work)) == 1  # process 0 alone writes TensorBoard
  single = fx.short_reference(s)

  got, want = fx.read_scalars(work, LOSS), fx.read_scalars(single, LOSS)
  assert sorted(got) == sorted(want) == list(range(1, fx.SHORT_STEPS + 1))
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-3), step
  fx.assert_states_close(fx.load_state(work), fx.load_state(single), rtol=1e-3, atol=1e-5)
  fx.assert_metrics_close(fx.comparable(fx.load_metrics(work)),
                          fx.comparable(fx.load_metrics(single)), rtol=1e-3, atol=1e-4)
