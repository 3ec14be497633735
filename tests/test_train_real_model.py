"""The train step on the real Moment&Cross model and loss, on a dummy batch."""

import functools

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from mcjax import losses
from mcjax.model import build_model
from mcjax.contract import schema
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import state as state_lib
from mcjax.runtime import step as step_lib
from test_model import tiny


def test_real_model_and_loss_train_step():
  mesh = mesh_lib.make_mesh((2, 4))
  optim = state_lib.OptimConfig()
  build = functools.partial(build_model, tiny())
  model_def, state, shardings = state_lib.create_train_state(build, mesh, optim)
  assert state.tables["tables"]["user"].sharding.spec == P("model", None)
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  train_step = step_lib.make_train_step(model_def, optim, loss_fn, shardings, mesh)
  before = jax.device_get(state.tables["tables"]["user"])
  batch = schema.dummy_batch(16, 6, 5)
  for _ in range(2):
    state, metrics = train_step(state, batch)
  assert {"learning/loss", "learning/grad_norm", "loss/bce"} <= set(metrics)
  assert np.isfinite(float(metrics["learning/loss"]))
  after = jax.device_get(state.tables["tables"]["user"])
  changed = np.flatnonzero(np.any(after != before, axis=1))
  assert 0 < len(changed) <= 16  # only the batch's user rows moved


def test_real_model_sparse_step_equals_dense_step():
  """Sparse row updates (the inline side tables differentiated whole, whatever
  dense_below_rows says) give the state of the dense full-table reference."""
  mesh = mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1])
  optim = state_lib.OptimConfig()
  model_def, state, shardings = state_lib.create_train_state(
      functools.partial(build_model, tiny()), mesh, optim)
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  batch = schema.dummy_batch(8, 6, 5, seed=2)
  initial = jax.device_get(state)
  results = []
  for sparse_mode, dense_below in ((True, 0), (True, 500), (False, 0)):
    step = step_lib.make_train_step(model_def, optim, loss_fn, shardings, mesh,
                                    sparse_update=sparse_mode, dense_below_rows=dense_below)
    state = jax.device_put(initial, shardings)
    for _ in range(2):
      state, metrics = step(state, batch)
    results.append((jax.device_get(state), metrics))
  ref, ref_metrics = results[-1]
  for got, got_metrics in results[:-1]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, ref)
    np.testing.assert_allclose(got_metrics["learning/row_grad_norm"],
                               ref_metrics["learning/row_grad_norm"], rtol=1e-4)
  side = ref.tables["tables"]["sv_side"]
  assert np.any(side != initial.tables["tables"]["sv_side"])  # inline tables are trained
