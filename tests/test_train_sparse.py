"""Sparse row updates equal the dense reference, alone, under row sharding and in a step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcjax.contract import schema
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import sparse
from mcjax.runtime import state as state_lib
from mcjax.runtime import step as step_lib
import toy_model

VOCAB, DIM = 16, 4
# Duplicates within and across rows; rows 0, 6, 7, 10, 11, 13-15 are never touched.
IDS = [np.array([[1, 2, 2, 5, 1], [3, 3, 3, 9, 12], [4, 8, 1, 2, 5]], np.int32),
       np.array([[2, 2, 2, 2, 2], [1, 1, 3, 4, 5], [12, 12, 9, 9, 8]], np.int32)]
WEIGHTS = jnp.linspace(-1.0, 1.0, 3 * 5 * DIM).reshape(3, 5, DIM)


def _loss_of_rows(rows):
  return jnp.sum(jnp.sin(rows) * WEIGHTS) + jnp.sum(rows ** 2)


def _run(cfg, sparse_mode, n_steps=4, table_sharding=None):
  table = jax.random.normal(jax.random.key(0), (VOCAB, DIM))
  row_state = sparse.init_row_state(table, cfg)
  if table_sharding is not None:
    table = jax.device_put(table, table_sharding)

  @jax.jit
  def step(table, row_state, ids, t):
    if sparse_mode:
      g = jax.grad(_loss_of_rows)(table[ids])
      return sparse.sparse_update(table, row_state, ids, g, t, cfg)
    g = jax.grad(lambda tab: _loss_of_rows(tab[ids]))(table)
    return sparse.dense_update(table, row_state, g, t, cfg)

  for t in range(n_steps):
    table, row_state = step(table, row_state, IDS[t % 2], jnp.int32(t))
  return table, row_state


def test_unique_rows_sums_duplicates_and_pads_out_of_range():
  ids = np.array([[7, 3, 7, 0], [3, 15, 7, 3]], np.int32)
  grads = np.arange(8 * DIM, dtype=np.float32).reshape(2, 4, DIM)
  rows, summed = jax.jit(sparse.unique_rows, static_argnums=2)(ids, grads, VOCAB)
  distinct = np.unique(ids)
  n = distinct.size
  np.testing.assert_array_equal(rows[:n], distinct)  # sorted, distinct, real rows first
  np.testing.assert_array_equal(rows[n:], VOCAB + np.arange(n, ids.size))  # distinct padding
  for j, r in enumerate(distinct):
    np.testing.assert_allclose(summed[j], grads[ids == r].sum(0))
  np.testing.assert_array_equal(summed[n:], 0)


@pytest.mark.parametrize("kind", ["adagrad", "adam"])
def test_sparse_equals_dense(kind):
  cfg = sparse.RowOptConfig(kind=kind, learning_rate=0.1, initial_accumulator=0.1)
  t_sparse, s_sparse = _run(cfg, True)
  t_dense, s_dense = _run(cfg, False)
  np.testing.assert_allclose(t_sparse, t_dense, rtol=1e-6, atol=1e-7)
  for k in s_sparse:
    np.testing.assert_allclose(s_sparse[k], s_dense[k], rtol=1e-6, atol=1e-7)
  untouched = np.setdiff1d(np.arange(VOCAB), np.concatenate([i.ravel() for i in IDS]))
  t0 = jax.random.normal(jax.random.key(0), (VOCAB, DIM))
  np.testing.assert_array_equal(t_sparse[untouched], t0[untouched])
  assert not np.allclose(t_sparse[np.array([1, 2, 3])], t0[np.array([1, 2, 3])])


def test_sparse_update_under_row_sharding():
  cfg = sparse.RowOptConfig(kind="adagrad", learning_rate=0.1)
  mesh = mesh_lib.make_mesh((2, 4))
  sharded, sharded_state = _run(cfg, True, table_sharding=NamedSharding(mesh, P("model", None)))
  ref, ref_state = _run(cfg, True)
  np.testing.assert_allclose(sharded, ref, rtol=1e-6)
  np.testing.assert_allclose(sharded_state["acc"], ref_state["acc"], rtol=1e-6)


def test_unique_rows_pads_out_of_range():
  ids = jnp.array([3, 1, 3, 3], jnp.int32)
  rows, grads = sparse.unique_rows(ids, jnp.ones((4, 2)), vocab=5)
  np.testing.assert_array_equal(rows, [1, 3, 7, 8])
  np.testing.assert_array_equal(grads, [[1, 1], [3, 3], [0, 0], [0, 0]])


def test_row_opt_config_validates():
  with pytest.raises(ValueError, match="kind"):
    sparse.RowOptConfig(kind="sgd")


def test_train_step_sparse_equals_dense_mode():
  cfg = toy_model.ToyConfig(user_vocab=32, item_vocab=16)
  build = functools.partial(toy_model.build_model, cfg)
  mesh = mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1])
  optim = state_lib.OptimConfig(rows=sparse.RowOptConfig(learning_rate=0.1))
  batch = schema.dummy_batch(8, 6, 2, seed=1)
  model_def, state, shardings = state_lib.create_train_state(build, mesh, optim)
  initial = jax.device_get(state)
  results = []
  # sparse everywhere; sparse for the 32-row user table with the 16-row item table dense;
  # dense everywhere (the reference)
  for sparse_mode, dense_below in ((True, 0), (True, 20), (False, 0)):
    state = jax.device_put(initial, shardings)
    step = step_lib.make_train_step(model_def, optim, toy_model.bce_loss, shardings, mesh,
                                    sparse_update=sparse_mode, dense_below_rows=dense_below)
    for _ in range(3):
      state, metrics = step(state, batch)
    results.append((jax.device_get(state), metrics))
  (b, mb) = results[-1]
  for a, ma in results[:-1]:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)
    np.testing.assert_allclose(ma["learning/row_grad_norm"], mb["learning/row_grad_norm"],
                               rtol=1e-5)


def test_adagrad_initial_accumulator_scales_first_updates_by_their_gradient():
  table = jnp.zeros((4, 2), jnp.float32)
  grads = jnp.array([[1e-4, -1e-4], [1e-1, 0.0]], jnp.float32)
  ids = jnp.array([1, 2])
  for acc0 in (0.0, 1e-6):
    cfg = sparse.RowOptConfig(learning_rate=0.05, initial_accumulator=acc0)
    new, state = sparse.sparse_update(table, sparse.init_row_state(table, cfg), ids, grads,
                                      jnp.array(0), cfg)
    acc = acc0 + np.mean(np.square(np.asarray(grads)), axis=1)
    np.testing.assert_allclose(state["acc"][ids], acc, rtol=1e-6)
    np.testing.assert_allclose(new[ids], -0.05 * np.asarray(grads) / (np.sqrt(acc)[:, None]
                                                                      + cfg.eps), rtol=1e-5)
  # with 0 the tiny gradient moves its row by lr (sign-like); with 1e-6 by ~lr * 0.1
  assert abs(float(new[1, 0])) < 0.006


def test_embedding_initial_accumulator_reaches_the_row_optimizer():
  from mcjax import config as mcconfig
  cfg = mcconfig.default_config()
  cfg.train.embedding_initial_accumulator = 1e-6
  assert state_lib.optim_config(cfg).rows.initial_accumulator == 1e-6
  cfg.train.embedding_initial_accumulator = -1.0
  with pytest.raises(ValueError, match="embedding_initial_accumulator"):
    mcconfig.validate(cfg)


def test_warmup_steps_reach_the_dense_schedule():
  from mcjax import config as mcconfig
  cfg = mcconfig.default_config()
  assert state_lib.optim_config(cfg).schedule()(0) == cfg.train.learning_rate  # default: none
  cfg.train.warmup_steps, lr = 10, cfg.train.learning_rate
  sched = state_lib.optim_config(cfg).schedule()
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(50)],
                             [0.0, lr / 2, lr, lr], rtol=1e-6)
  cfg.train.warmup_steps = -1
  with pytest.raises(ValueError, match="train.warmup_steps"):
    mcconfig.validate(cfg)
