"""Checkpoints: save on one mesh, restore bit-exactly onto others; Grain iterator resumes."""

import functools

import grain
import jax
import numpy as np
import pytest
import toy_model

from mcjax.runtime import checkpoint
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import state as state_lib

BUILD = functools.partial(toy_model.build_model, toy_model.ToyConfig(user_vocab=64))
OPTIM = state_lib.OptimConfig()


def test_save_on_one_mesh_restore_on_others(tmp_path):
  _, state, _ = state_lib.create_train_state(BUILD, mesh_lib.make_mesh((1, 8)), OPTIM, seed=3)
  host = jax.device_get(state)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", save_every=2)
  assert not ckpt.save(1, state)  # not a multiple of save_every
  assert ckpt.save(2, state)
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [2]

  _, abstract, specs = state_lib.setup(BUILD, OPTIM)
  for shape in [(4, 2), (8, 1)]:
    target = state_lib.abstract_with_shardings(abstract, specs, mesh_lib.make_mesh(shape))
    restored = ckpt.restore(target)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), host)
    jax.tree.map(lambda r, t: assert_same_sharding(r, t.sharding), restored, target)
  assert restored.tables["user"].sharding.spec == jax.P("model", None)
  assert restored.row_state["user"]["acc"].sharding.spec == jax.P("model")
  ckpt.close()


def assert_same_sharding(array, sharding):
  assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)


def test_grain_iterator_resumes_at_same_element(tmp_path):
  dataset = grain.MapDataset.range(100).batch(4).to_iter_dataset()
  state = {"w": np.arange(6.0, dtype=np.float32)}
  data_iter = iter(dataset)
  for _ in range(3):
    next(data_iter)
  with checkpoint.Checkpointer(tmp_path / "ckpt", save_every=10) as ckpt:
    assert ckpt.save(7, state, data_iter, force=True)
    ckpt.wait_until_finished()
    expected = next(data_iter)
    resumed = iter(dataset)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"w": jax.ShapeDtypeStruct((6,), np.float32, sharding=device)}
    restored = ckpt.restore(abstract, resumed)
  np.testing.assert_array_equal(restored["w"], state["w"])
  np.testing.assert_array_equal(next(resumed), expected)
  np.testing.assert_array_equal(expected, [12, 13, 14, 15])


def test_restore_errors(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore({})
  ckpt.save(0, {"w": np.zeros(2, np.float32)}, force=True)
  ckpt.wait_until_finished()
  with pytest.raises(KeyError, match="data_iter"):
    ckpt.restore({"w": jax.ShapeDtypeStruct((2,), np.float32)},
                 iter(grain.MapDataset.range(4).to_iter_dataset()))
  ckpt.close()


def _state(value: float) -> dict:
  return {"w": np.full((64, 16), value, np.float32), "b": np.arange(8, dtype=np.int32)}


def _largest_file(folder) -> str:
  import os
  paths = [os.path.join(r, n) for r, _, ns in os.walk(folder) for n in ns
           if n != "checksums.json"]
  return max(paths, key=os.path.getsize)


def _corrupt(path: str, at: int = 64, n: int = 256) -> None:
  """Overwrites ``n`` bytes inside ``path`` (its size unchanged)."""
  import os
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(min(at, max(size - n, 0)))
    f.write(bytes((i * 37 + 11) % 256 for i in range(min(n, size))))


@pytest.mark.parametrize("async_save", [True, False])
def test_checkpoints_are_sealed_with_checksums(tmp_path, async_save):
  import os
  with checkpoint.Checkpointer(tmp_path / "ckpt", async_save=async_save) as ckpt:
    for step in (1, 2):
      ckpt.save(step, _state(step), force=True)
    ckpt.wait_until_finished()
  for step in (1, 2):
    assert os.path.exists(tmp_path / "ckpt" / str(step) / "checksums.json")
    assert checkpoint.verify_step(str(tmp_path / "ckpt"), step)


def test_corrupt_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
  """256 bytes overwritten inside a state file of the newest step (size unchanged): restore
  names the file in one warning line and returns the previous step's state; a given corrupt
  step, or every step corrupt, is one CorruptFileError line naming the file."""
  from mcjax.eventlog import files
  directory = str(tmp_path / "ckpt")
  with checkpoint.Checkpointer(directory, async_save=False) as ckpt:
    for step in (100, 200):
      ckpt.save(step, _state(step), force=True)
  bad = _largest_file(tmp_path / "ckpt" / "200")
  _corrupt(bad)
  like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0))
  with checkpoint.Checkpointer(directory) as ckpt:
    caplog.clear()
    got = ckpt.restore(like)
    np.testing.assert_array_equal(got["w"], _state(100)["w"])
    warned = [r.getMessage() for r in caplog.records if "corrupt checkpoint" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        f"corrupt checkpoint, falling back to step 100: {bad}: crc32 ")
    assert "\n" not in warned[0]
    with pytest.raises(files.CorruptFileError, match=f"^{bad}: crc32 [0-9a-f]{{8}}, "
                       "checksums.json says [0-9a-f]{8}: the checkpoint step 200 is corrupt"):
      ckpt.restore(like, step=200)
  _corrupt(_largest_file(tmp_path / "ckpt" / "100"))
  with checkpoint.Checkpointer(directory) as ckpt:
    with pytest.raises(files.CorruptFileError, match=f"^no intact checkpoint in {directory}: "):
      ckpt.restore(like)


def test_trainer_quarantines_corrupt_newer_steps(tmp_path):
  """The trainer's resume moves corrupt newer steps aside, so it resumes from the newest
  intact step and can write those steps again; a truncated file is caught by its size."""
  import os
  directory = str(tmp_path / "ckpt")
  with checkpoint.Checkpointer(directory, async_save=False) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step), force=True)
  with open(_largest_file(tmp_path / "ckpt" / "3"), "r+b") as f:
    f.truncate(10)
  _corrupt(_largest_file(tmp_path / "ckpt" / "2"))
  assert checkpoint.quarantine_corrupt(directory) == [2, 3]
  assert sorted(os.listdir(directory + ".corrupt")) == ["2", "3"]
  with checkpoint.Checkpointer(directory, async_save=False) as ckpt:
    assert ckpt.latest_step() == 1
    ckpt.save(2, _state(2), force=True)
    assert checkpoint.newest_intact(directory) == 2


def test_validate_workdir_names_the_corrupt_checkpoint(tmp_path):
  import os
  import subprocess
  import sys
  directory = str(tmp_path / "ckpt")
  with checkpoint.Checkpointer(directory, async_save=False) as ckpt:
    for step in (1, 2):
      ckpt.save(step, _state(step), force=True)
  bad = _largest_file(tmp_path / "ckpt" / "2")
  _corrupt(bad)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "launch.validate", f"--workdir={tmp_path}"],
                     cwd=root, capture_output=True, text=True, timeout=120,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 1 and r.stdout.splitlines() == [f"OK: {directory}/1"]
  assert r.stderr.splitlines()[-1].startswith(f"CORRUPT: {bad}: crc32 ")
