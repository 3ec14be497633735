"""The embedding exchange (mesh.embedding_exchange = "all_to_all"): lookups and row updates
through all-to-alls equal the replicated reference on 8 host devices; the real train step
through it equals the GSPMD step; overflow is counted, never silent."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcjax import config as mcconfig
from mcjax import losses
from mcjax.contract import schema
from mcjax.model import build_model
from mcjax.runtime import exchange
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import partition
from mcjax.runtime import sparse
from mcjax.runtime import state as state_lib
from mcjax.runtime import step as step_lib
from test_model import tiny

V, D = 64, 4


def _put(mesh, x, spec):
  return jax.device_put(x, NamedSharding(mesh, spec))


def _exchange(mesh, table, ids, grads, cfg, factor, step=0):
  """lookup rows, then (table, row_state, row_grad_sq, lookup's overflow) of one update."""
  ids_d = [_put(mesh, i, P("data")) for i in ids]
  rows, overflow = jax.jit(lambda t, i: exchange.lookup(t, i, mesh, factor))(
      _put(mesh, table, P(exchange.AXES, None)), ids_d)
  state = jax.tree.map(lambda x: _put(mesh, x, P(exchange.AXES, *(None,) * (x.ndim - 1))),
                       sparse.init_row_state(jnp.asarray(table), cfg))
  out = jax.jit(lambda t, s, i, g: exchange.update(t, s, i, g, jnp.int32(step), cfg, mesh,
                                                   factor))(
      _put(mesh, table, P(exchange.AXES, None)), state, ids_d,
      [_put(mesh, g, P("data")) for g in grads])
  return [np.asarray(r) for r in rows], jax.device_get((*out, overflow))


@pytest.mark.parametrize("shape,kind", [((4, 2), "adagrad"), ((8, 1), "adam"),
                                        ((1, 8), "adagrad")])
def test_lookup_and_update_equal_the_replicated_reference(shape, kind):
  """Two id arrays of one table (duplicates within and across devices): the rows are
  table[ids], and the update equals ``sparse.sparse_update`` on the whole batch."""
  mesh = mesh_lib.make_mesh(shape)
  rng = np.random.default_rng(0)
  table = rng.normal(size=(V, D)).astype(np.float32)
  ids = [rng.integers(0, V, size=(16, 5)).astype(np.int32),
         rng.integers(0, 8, size=(16,)).astype(np.int32)]  # crowded into owner 0's block
  grads = [rng.normal(size=i.shape + (D,)).astype(np.float32) for i in ids]
  cfg = sparse.RowOptConfig(kind=kind, learning_rate=0.1)
  rows, (new_table, new_state, sq, overflow) = _exchange(mesh, table, ids, grads, cfg, 100.0,
                                                         step=3)
  for got, i in zip(rows, ids):
    np.testing.assert_array_equal(got, table[i])
  flat_ids = np.concatenate([i.reshape(-1) for i in ids])
  flat_g = np.concatenate([g.reshape(-1, D) for g in grads])
  ref_table, ref_state = sparse.sparse_update(
      jnp.asarray(table), sparse.init_row_state(jnp.asarray(table), cfg), jnp.asarray(flat_ids),
      jnp.asarray(flat_g), jnp.int32(3), cfg)
  np.testing.assert_allclose(new_table, ref_table, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state, jax.device_get(ref_state))
  summed = np.zeros((V, D), np.float32)
  np.add.at(summed, flat_ids, flat_g)
  assert float(sq) == pytest.approx(float(np.sum(summed ** 2)), rel=1e-5)
  assert int(overflow) == 0


def test_overflow_is_counted_and_the_rest_is_exact():
  """Every device asks owner 0 for the same 8 distinct rows, more than its capacity: the
  count is exact, the ids that fit get their rows and updates, the others zeros and none."""
  mesh = mesh_lib.make_mesh((8, 1))
  table = np.arange(V * D, dtype=np.float32).reshape(V, D) + 1
  ids = [np.tile(np.arange(8, dtype=np.int32)[::-1], (8, 1))]  # 8 ids per device, all owner 0
  grads = [np.ones((8, 8, D), np.float32)]
  cap = exchange.capacity(8, 8, 1.0)
  assert cap == 7  # 1.0 x 1 + 6 x sqrt(1): the lowest seven distinct ids of each device fit
  cfg = sparse.RowOptConfig(kind="adagrad", learning_rate=0.1)
  (rows,), (new_table, _, _, overflow) = _exchange(mesh, table, ids, grads, cfg, 1.0)
  assert int(overflow) == 8 * (8 - cap)
  served = ids[0] < cap
  np.testing.assert_array_equal(rows[served], table[ids[0][served]])
  assert np.all(rows[~served] == 0)
  moved = np.flatnonzero(np.any(new_table != table, axis=1))
  np.testing.assert_array_equal(moved, np.arange(cap))


def test_capacity_bounds():
  assert exchange.capacity(65536, 256, 2.0) == 512 + 96
  assert exchange.capacity(10, 2, 100.0) == 10  # never more than the chunk
  assert exchange.capacity(0, 8, 2.0) == 1


def _tiny_step(shape, exchange_mode, **model_overrides):
  mesh = mesh_lib.make_mesh(shape, devices=jax.devices()[:shape[0] * shape[1]])
  mesh_cfg = mcconfig.default_config().mesh
  mesh_cfg.embedding_exchange = exchange_mode
  optim = state_lib.OptimConfig()
  model_cfg = tiny(**model_overrides)
  model_def, state, shardings = state_lib.create_train_state(
      functools.partial(build_model, model_cfg), mesh, optim, **partition.from_config(mesh_cfg))
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  capacity = partition.exchange_capacity(mesh_cfg)
  step = step_lib.make_train_step(
      model_def, optim, loss_fn, shardings, mesh,
      dense_below_rows=model_cfg.embedding.large_table_rows, exchange_capacity=capacity)
  step.eval = step_lib.make_eval_step(model_def, loss_fn, shardings, mesh,
                                      exchange_capacity=capacity)
  return state, step


def test_real_train_step_through_the_exchange_equals_the_gspmd_step():
  """The tiny model's train step on a 4 x 2 mesh with every large table sharded over the 8
  devices and served by the exchange leaves the state and metrics of the GSPMD step on one
  device."""
  batch = schema.dummy_batch(16, 6, 5, seed=4)
  results, evals = [], []
  for shape, mode in (((1, 1), "gspmd"), ((4, 2), "all_to_all")):
    state, step = _tiny_step(shape, mode)
    for _ in range(2):
      state, metrics = step(state, batch)
    results.append((state, jax.device_get(metrics)))
    evals.append(jax.device_get(step.eval(state, schema.dummy_batch(16, 6, 5, seed=5))))
  (ref, ref_m), (got, got_m) = results
  (ref_probs, ref_eval), (got_probs, got_eval) = evals  # evaluation reads through it too
  np.testing.assert_allclose(got_probs, ref_probs, rtol=1e-4, atol=1e-6)
  assert got_eval["eval/loss"] == pytest.approx(ref_eval["eval/loss"], rel=1e-4)
  assert got_eval["eval/exchange_overflow"] == 0 and "eval/exchange_overflow" not in ref_eval
  user = got.tables["tables"]["user"]
  assert user.sharding.spec == P(("data", "model"), None)
  assert got.row_state["tables"]["user"]["acc"].sharding.spec == P(("data", "model"))
  assert got_m["learning/exchange_overflow"] == 0
  assert "learning/exchange_overflow" not in ref_m
  for key in ("learning/loss", "learning/row_grad_norm", "learning/grad_norm"):
    assert got_m[key] == pytest.approx(ref_m[key], rel=1e-4), key
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
               jax.device_get(got), jax.device_get(ref))


def test_two_stage_search_through_the_exchange_equals_the_reference_step():
  """The f32 two-stage GSU pre-scores on the tables' owning shards (custom partitioning):
  with the tables over all 8 devices and the exchange, the state after two steps is the
  reference GSU's on one device."""
  batch = schema.dummy_batch(16, 12, 10, seed=3)
  results = []
  for shape, mode, approx in (((1, 1), "gspmd", "off"), ((4, 2), "all_to_all", "f32")):
    state, step = _tiny_step(shape, mode, **{"gsu.approx": approx, "gsu.candidates": 4})
    for _ in range(2):
      state, metrics = step(state, batch)
    results.append((jax.device_get(state), float(metrics["learning/loss"])))
  (ref, ref_loss), (got, loss) = results
  assert loss == pytest.approx(ref_loss, rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), got, ref)


def test_config_keys_and_bad_values():
  cfg = mcconfig.default_config()
  assert partition.exchange_capacity(cfg.mesh) is None
  assert dict(partition.from_config(cfg.mesh)["logical_rules"])["vocab"] == "model"
  cfg.mesh.embedding_exchange = "all_to_all"
  assert partition.exchange_capacity(cfg.mesh) == 2.0
  assert dict(partition.from_config(cfg.mesh)["logical_rules"])["vocab"] == ("data", "model")
  mcconfig.validate(cfg)
  for key, value, message in (("embedding_exchange", "nccl", "config.mesh.embedding_exchange"),
                              ("exchange_capacity", 0.5, "config.mesh.exchange_capacity")):
    bad = mcconfig.default_config()
    bad.mesh[key] = value
    with pytest.raises(ValueError, match=message):
      mcconfig.validate(bad)
  from mcjax.model import config as model_config
  big = tiny()
  big.embedding.vocab.user = 2**30  # padding slots (vocab + slot) must stay in int32
  with pytest.raises(ValueError, match=r"embedding.vocab.user.*must be < 2\*\*30"):
    model_config.validate(big)
  with pytest.raises(ValueError, match="table tables/user has 1001 rows, not divisible by "
                                       "the 8 devices"):
    exchange.check_table("tables/user", 1001, mesh_lib.make_mesh((4, 2)))


def test_training_stops_at_a_step_that_overflowed():
  """The trainer's step log refuses the first step with ids past the exchange's capacity,
  in one line naming the step and the key to raise."""
  from types import SimpleNamespace

  from mcjax.train import RunError
  from mcjax.train.steplog import StepLog
  cfg = mcconfig.default_config()
  cfg.mesh.embedding_exchange = "all_to_all"
  log = StepLog(cfg, SimpleNamespace(total_steps=lambda batch: 10), SimpleNamespace(main=False),
                mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1]), 0)
  weight = {"weight": np.ones(16)}
  log.step(6, {"learning/loss": 0.5, "learning/exchange_overflow": 0.0}, weight, None)
  log.step(7, {"learning/loss": 0.5, "learning/exchange_overflow": 3.0}, weight, None)
  with pytest.raises(RunError, match=r"^step 7: the embedding exchange dropped 3 ids past its "
                                     r"capacity .* --config.mesh.exchange_capacity \(now 2.0\)$"):
    log.flush(None)


def test_scoring_stops_when_evaluation_overflowed():
  """Evaluation through the exchange: a batch with ids past the capacity is refused in one
  line naming the records and the key, not scored with zero rows."""
  from types import SimpleNamespace

  from mcjax.train import RunError
  from mcjax.train.evaluate import Evaluator
  cfg = mcconfig.default_config()
  cfg.mesh.embedding_exchange = "all_to_all"
  data = SimpleNamespace(cfg=cfg, eval_batches=lambda lo, hi: [{}])
  probs = np.full((cfg.train.eval_batch_size, len(schema.TASKS)), 0.5, np.float32)
  evaluator = Evaluator(lambda state, batch: (probs, {"eval/exchange_overflow": 5.0}), data,
                        mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1]))
  state = SimpleNamespace(step=np.int32(12))
  with pytest.raises(RunError, match=r"^step 12: the embedding exchange dropped 5 ids of "
                                     r"evaluation records \[0, 10\) .* \(now 2.0\)$"):
    evaluator(state, 0, 10)


@pytest.mark.parametrize("exchange_mode, layout, rows, message", [
    ("all_to_all", (4, 2), 2052, "2052 rows do not split over the 8 devices of ('data', "
     "'model') (mesh.embedding_exchange=all_to_all shards large tables over every device); "
     "give a multiple of 8, e.g. 2056"),
    ("gspmd", (2, 4), 2050, "2050 rows do not split over the 4 devices of ('model',) (large "
     "tables are row-sharded on the mesh's model axis); give a multiple of 4, e.g. 2052"),
])
def test_a_table_that_does_not_split_over_the_mesh_is_refused_in_one_line(
    exchange_mode, layout, rows, message):
  """Before any tracing: one line naming the config key, the devices and the next multiple
  (jax's own IndivisibleError named neither)."""
  from mcjax import runtime
  cfg = mcconfig.load_config("tiny")
  cfg.mesh.embedding_exchange = exchange_mode
  cfg.model.embedding.vocab.user = rows
  mesh = mesh_lib.make_mesh(layout, jax.devices()[:8])
  with pytest.raises(ValueError) as e:
    runtime.build(cfg, mesh, init=False)
  assert str(e.value) == f"model.embedding.vocab.user={rows}: {message}"
  cfg.model.embedding.vocab.user = 2048  # a multiple passes the check
  partition.check_table_rows(cfg, mesh)
