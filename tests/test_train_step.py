"""Mesh, partition rules and the jitted steps: same result on every mesh shape, tables and
their optimizer state row-sharded, replicated large params caught, no recompiles."""

import functools

import jax
import numpy as np
import pytest
import toy_model
from jax.sharding import PartitionSpec as P

from mcjax.contract import schema
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import partition
from mcjax.runtime import sparse
from mcjax.runtime import state as state_lib
from mcjax.runtime import step as step_lib

BUILD = functools.partial(toy_model.build_model, toy_model.ToyConfig(user_vocab=64, hidden=16))
OPTIM = state_lib.OptimConfig(learning_rate=1e-2,
                              rows=sparse.RowOptConfig(kind="adam", learning_rate=0.1))
RULES = ((r"hidden/kernel", P(None, "model")),)
BATCHES = [schema.dummy_batch(16, 6, 2, seed=s) for s in range(3)]


def test_make_mesh_shapes_and_errors():
  assert dict(mesh_lib.make_mesh((-1, 2)).shape) == {"data": 4, "model": 2}
  assert dict(mesh_lib.make_mesh((1, -1)).shape) == {"data": 1, "model": 8}
  with pytest.raises(ValueError, match="does not divide"):
    mesh_lib.make_mesh((3, -1))
  with pytest.raises(ValueError, match="uses 4 devices"):
    mesh_lib.make_mesh((2, 2))
  with pytest.raises(ValueError, match="at most one -1"):
    mesh_lib.make_mesh((-1, -1))


def test_rules_first_match_then_logical_axes():
  rules = ((r"hidden/kernel", P(None, "model")), (r"hidden", P("data")))
  assert partition.spec_for("hidden/kernel", None, rules) == P(None, "model")
  assert partition.spec_for("hidden/bias", None, rules) == P("data")
  assert partition.spec_for("head/bias", None, rules) == P()
  with pytest.raises(ValueError, match="tables/x.*'mystery'"):
    partition.logical_to_spec(("mystery",), partition.LOGICAL_RULES, "tables/x")


def test_check_sharding_names_replicated_large_param():
  no_model_axis = (("vocab", None),) + tuple(partition.LOGICAL_RULES[1:])
  with pytest.raises(ValueError, match=r"tables/user \("):
    state_lib.create_train_state(BUILD, mesh_lib.make_mesh((2, 4)), OPTIM,
                                 logical_rules=no_model_axis, max_replicated_bytes=1024)


def test_unknown_table_key_is_an_error():
  model_def, _, _ = state_lib.setup(BUILD, OPTIM)
  assert model_def.table_path("user") == ("user",)
  with pytest.raises(KeyError, match="'video'"):
    model_def.table_path("video")


@pytest.fixture(scope="module")
def reference():
  """State born sharded on a (2, 4) mesh (host copy of the initial state) and 3 steps there."""
  mesh = mesh_lib.make_mesh((2, 4))
  model_def, state, shardings = state_lib.create_train_state(BUILD, mesh, OPTIM, rules=RULES)
  initial = jax.device_get(state)
  train_step = step_lib.make_train_step(model_def, OPTIM, toy_model.bce_loss, shardings, mesh)
  for batch in BATCHES:
    state, metrics = train_step(state, batch)
  return model_def, initial, jax.device_get(state), metrics, train_step, state


def test_born_sharded_tables_and_optimizer_state(reference):
  *_, state = reference
  user = state.tables["user"]
  assert user.sharding.spec == P("model", None)
  assert {s.data.shape for s in user.addressable_shards} == {(16, 8)}
  for moment in ("m", "v"):
    assert state.row_state["user"][moment].sharding.spec == P("model", None)
  assert state.tables["item"].sharding.is_fully_replicated
  adam = state.opt_state[1][0]
  assert adam.mu["hidden"]["kernel"].sharding.spec == P(None, "model")
  assert adam.nu["hidden"]["kernel"].sharding.spec == P(None, "model")


def test_no_recompile_across_batches(reference):
  *_, train_step, _ = reference
  assert train_step._cache_size() == 1


def test_metrics_namespaced(reference):
  _, _, final, metrics, _, _ = reference
  assert set(metrics) == {"learning/loss", "learning/grad_norm", "learning/row_grad_norm",
                          "learning/param_norm", "learning/lr", "loss/bce"}
  assert int(final.step) == 3


@pytest.mark.parametrize("shape", [(1, 1), (8, 1), (1, 8)])
def test_same_params_on_every_mesh(reference, shape):
  model_def, initial, expected, expected_metrics, _, _ = reference
  devices = jax.devices()[:1] if shape == (1, 1) else None
  mesh = mesh_lib.make_mesh(shape, devices=devices)
  _, _, specs = state_lib.setup(BUILD, OPTIM, rules=RULES)
  shardings = partition.to_shardings(specs, mesh)
  state = jax.device_put(initial, shardings)
  train_step = step_lib.make_train_step(model_def, OPTIM, toy_model.bce_loss, shardings, mesh)
  for batch in BATCHES:
    state, metrics = train_step(state, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(state), expected)
  np.testing.assert_allclose(metrics["learning/loss"], expected_metrics["learning/loss"],
                             rtol=1e-5)
  assert state.tables["user"].sharding.spec == P("model", None)


def test_eval_step(reference):
  model_def, _, _, _, _, state = reference
  mesh = mesh_lib.make_mesh((2, 4))
  shardings = jax.tree.map(lambda x: x.sharding, state)
  eval_step = step_lib.make_eval_step(model_def, toy_model.bce_loss, shardings, mesh)
  probs, metrics = eval_step(state, BATCHES[0])
  assert probs.shape == (16, len(schema.TASKS))
  assert np.all((np.asarray(probs) > 0) & (np.asarray(probs) < 1))
  assert set(metrics) == {"eval/loss", "eval/bce"}
