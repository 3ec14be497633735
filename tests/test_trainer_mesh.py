"""Same code, any mesh: the trainer gives the same losses and parameters on meshes (8, 1),
(4, 2) and (2, 4) of 8 host devices (and on one device), also with the embedding exchange
(tables over all 8 devices, all-to-alls), and a run checkpointed on (4, 2) continues on (8, 1)
like an uninterrupted run."""

import os
import shutil

import pytest
import trainer_fixtures as fx

MESHES = ((8, 1), (4, 2), (2, 4))
EXCHANGE = "4x2_all_to_all"  # (4, 2) with mesh.embedding_exchange="all_to_all"
STEPS = 5
LOSS = "learning/loss"


@pytest.fixture(scope="module")
def s(tmp_path_factory):
  return fx.session(tmp_path_factory)


@pytest.fixture(scope="module")
def mesh_runs(s):
  """{mesh shape: workdir} of SHORT runs of STEPS steps on 8 devices (run side by side)."""
  works = {shape: fx.workdir(s, f"mesh_{shape[0]}x{shape[1]}") for shape in MESHES}
  works[EXCHANGE] = fx.workdir(s, f"mesh_{EXCHANGE}")
  extra = {EXCHANGE: ("--config.mesh.shape=(4,2)", "--config.mesh.embedding_exchange=all_to_all")}
  procs = {shape: fx.start(s, work, *fx.SHORT, f"--config.train.max_steps={STEPS}",
                           *extra.get(shape, (f"--config.mesh.shape={shape}",)), devices=8)
           for shape, work in works.items()}
  fx.short_reference(s, block=False)
  for shape, proc in procs.items():
    fx.wait(proc, works[shape] + ".log")
  return works


def test_meshes_give_the_same_losses_and_parameters(s, mesh_runs):
  single = fx.short_reference(s)
  want = {k: v for k, v in fx.read_scalars(single, LOSS).items() if k <= STEPS}
  assert sorted(want) == list(range(1, STEPS + 1))
  first = fx.load_state(mesh_runs[MESHES[0]])
  for shape, work in mesh_runs.items():
    got = fx.read_scalars(work, LOSS)
    assert sorted(got) == sorted(want), shape
    for step in want:
      assert got[step] == pytest.approx(want[step], rel=1e-4), (shape, step)
    assert fx.ckpt_steps(work)[-1] == STEPS
    fx.assert_states_close(fx.load_state(work), first, rtol=1e-4, atol=1e-6)
    fx.assert_metrics_close(fx.comparable(fx.load_metrics(work)),
                            fx.comparable(fx.load_metrics(mesh_runs[MESHES[0]])),
                            rtol=1e-4, atol=1e-5)


def test_checkpoint_of_mesh_4x2_continues_on_8x1(s, mesh_runs):
  work = os.path.join(s.root, "mesh_4x2_then_8x1")
  shutil.copytree(mesh_runs[(4, 2)], work, symlinks=True)
  fx.run(s, work, *fx.SHORT, f"--config.train.max_steps={fx.SHORT_STEPS}",
         "--config.mesh.shape=(8,1)", devices=8)
  # The second run restored step STEPS: its event file starts after it.
  assert min(fx.read_scalars(work, LOSS, newest_only=True)) == STEPS + 1
  assert fx.ckpt_steps(work)[-1] == fx.SHORT_STEPS

  single = fx.short_reference(s)  # the same run, uninterrupted, on one device
  got, want = fx.read_scalars(work, LOSS), fx.read_scalars(single, LOSS)
  assert sorted(got) == sorted(want) == list(range(1, fx.SHORT_STEPS + 1))
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-3), step
  fx.assert_states_close(fx.load_state(work), fx.load_state(single), rtol=1e-3, atol=1e-5)
  fx.assert_metrics_close(fx.comparable(fx.load_metrics(work)),
                          fx.comparable(fx.load_metrics(single)), rtol=1e-3, atol=1e-4)
