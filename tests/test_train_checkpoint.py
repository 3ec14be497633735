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
