"""``model.compute_dtype``: bfloat16 activations and matmuls over float32 parameters; and
``model.embedding.table_dtype``: bfloat16 table storage with float32 gradients and updates.

With "bfloat16" the parameters, their gradients, the outputs (logits) and the train state
stay float32, the forward is close to the float32 one (same parameters: the hash initialiser
gives both models the same values), its matmuls really take bfloat16 operands, and the train
step learns. A bad value is refused naming the key. (That "float32" is the model without the
option, bit for bit, is what tests/test_model.py and tests/test_model_reference.py check.)
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcjax import losses
from mcjax.model import build_model
from mcjax.model import config as model_config
from mcjax.contract import schema
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import state as state_lib
from mcjax.contract import batch as batch_lib
from mcjax.runtime import step as step_lib
from test_model import tiny

# A broken cast (a layer left in float32 on purpose is fine; a wrong kernel, a lost bias or a
# softmax over garbage is not) moves probabilities by far more than bfloat16 rounding, which
# moves them by ~1e-3 on the tiny config.
MAX_PROB_DIFF = 0.02
DOT = re.compile(r"stablehlo\.dot_general.*:\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)")

# Two models cover the switches whose layers and matmuls differ: the soft search with the
# bf16 two-stage pre-score, PLE towers and author-level outputs; the hard search with the
# default towers.
CASES = {
    "soft_approx_bf16_ple_author": {"towers.kind": "ple", "contrastive.author_level": True,
                                    "gsu.approx": "bf16", "gsu.candidates": 4,
                                    "esu.recent_n": 2},
    "hard_author": {"gsu.mode": "hard_author"},
}


def _batch(seed=3):
  return batch_lib.host_batch(schema.dummy_batch(16, 12, 10, seed=seed))


def _forward(cfg):
  """(params, f(params, batch) -> (sum of logits, outputs), prescore(params, batch) -> the
  two-stage search's cut batch) of a model built from cfg."""
  graphdef, params, rest = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

  def f(p, batch):
    out = nnx.merge(graphdef, p, rest)(batch)
    return jnp.sum(out["logits"]), out

  def prescore(p, batch):
    return nnx.merge(graphdef, p, rest).cut_histories(batch)

  return params, f, prescore


def _dot_operand_types(fn, *args) -> list[tuple[str, str]]:
  """The operand types of every dot_general in fn's lowered StableHLO."""
  return _dots(jax.jit(fn).lower(*args))


def _dots(lowered) -> list[tuple[str, str]]:
  return DOT.findall(lowered.as_text())


def _bf16(dots):
  """The dots of ``dots`` whose operands are both bfloat16."""
  return [d for d in dots if "bf16" in d[0] and "bf16" in d[1]]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bfloat16_forward_is_close_in_float32_outputs_with_bf16_matmuls(case):
  batch = _batch()
  results = {}
  for dtype in ("float32", "bfloat16"):
    params, f, prescore = _forward(tiny(**CASES[case], compute_dtype=dtype))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    lowered = jax.jit(jax.value_and_grad(f, has_aux=True)).lower(params, batch)
    (_, out), grads = lowered.compile()(params, batch)
    assert {k: v.dtype for k, v in out.items()} == {k: jnp.float32 for k in out}
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((out, grads)))
    # forward dots; forward and backward dots; the pre-score's dots (gsu.approx; the model
    # cuts the histories twice, in lookup_ids and in apply_rows)
    results[dtype] = (out, _dot_operand_types(f, params, batch), _dots(lowered),
                      2 * _dot_operand_types(prescore, params, batch))
  (out32, fwd32, bwd32, pre32), (out16, fwd16, bwd16, pre16) = (results["float32"],
                                                                results["bfloat16"])
  assert bool(pre16) == bool(pre32) == (CASES[case].get("gsu.approx", "off") != "off")
  diff = np.abs(jax.nn.sigmoid(out32["logits"]) - jax.nn.sigmoid(out16["logits"]))
  assert 0 < diff.max() < MAX_PROB_DIFF, diff.max()
  for k in out32:  # the interest (and author) vectors too
    np.testing.assert_allclose(out16[k], out32[k], atol=0.1, rtol=0.1)
  # float32: no bfloat16 matmul but gsu.approx="bf16"'s pre-score's (its own precision)
  pre32_bf16 = [d for d in pre32 if "bf16" in d[0] + d[1]]
  assert fwd32 and pre32_bf16 == _bf16(pre32)
  for dots in (fwd32, bwd32):
    assert len([d for d in dots if "bf16" in d[0] + d[1]]) <= len(pre32_bf16), dots
  # bfloat16: the model's matmuls, forward and backward, take bfloat16 operands: every
  # forward matmul but the logits' and the pre-score's float32 ones (the backward's rest:
  # the logits' float32 cotangent)
  bf16_fwd, bf16_bwd = _bf16(fwd16), _bf16(bwd16)
  assert len(bf16_fwd) >= 0.6 * len(fwd16) and len(bf16_bwd) >= 0.6 * len(bwd16), (
      len(bf16_fwd), len(fwd16), len(bf16_bwd), len(bwd16))
  allowed = 1 + len(pre16) - len(_bf16(pre16))
  assert len(fwd16) - len(bf16_fwd) <= allowed, (allowed, fwd16)


# bf16 compute over bf16 tables (the float32-table step is the float32 step's code path:
# covered by every other train-step test); make test's time budget keeps one case.
@pytest.mark.parametrize("table_dtype", ["bfloat16"])
def test_bfloat16_train_step_keeps_float32_state_and_learns(table_dtype):
  mesh = mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1])
  optim = state_lib.OptimConfig()
  cfg = tiny(compute_dtype="bfloat16", **{"embedding.table_dtype": table_dtype})
  model_def, state, shardings = state_lib.create_train_state(
      functools.partial(build_model, cfg), mesh, optim)
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  step = step_lib.make_train_step(model_def, optim, loss_fn, shardings, mesh)
  batch = schema.dummy_batch(32, 6, 5, seed=1)
  loss = []
  for _ in range(6):
    state, metrics = step(state, batch)
    loss.append(float(metrics["learning/loss"]))
  assert all(np.isfinite(loss)), loss
  assert loss[-1] < loss[0] - 0.05, loss
  for part in (state.params, state.opt_state, state.row_state):
    floats = {x.dtype for x in jax.tree.leaves(part) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert floats == {jnp.dtype(jnp.float32)}, floats
  assert {x.dtype for x in jax.tree.leaves(state.tables)} == {jnp.dtype(table_dtype)}
  assert all(v.dtype == jnp.float32 for v in metrics.values())


@pytest.mark.parametrize("sparse_update", [True])  # the trainer's path (dense: the reference)
def test_bfloat16_tables_update_in_float32_and_round_once(sparse_update):
  """A step on bfloat16 tables is the step on float32 tables holding the same values (same
  float32 row gradients, optimizer state and dense parameters), its new rows rounded once."""
  mesh = mesh_lib.make_mesh((1, 1), devices=jax.devices()[:1])
  optim = state_lib.OptimConfig()
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  batch = schema.dummy_batch(16, 6, 5, seed=4)
  results = {}
  for table_dtype in ("bfloat16", "float32"):
    model_def, state, shardings = state_lib.create_train_state(
        functools.partial(build_model, tiny(**{"embedding.table_dtype": table_dtype})), mesh,
        optim)
    if table_dtype == "float32":  # the bfloat16 model's table values, held in float32
      bf16_tables = results["bfloat16"][0].tables
      state = jax.device_put(dataclasses.replace(state, tables=jax.tree.map(
          lambda t: np.asarray(t, np.float32), bf16_tables)), shardings)
    else:
      initial = jax.device_get(state)
    step = step_lib.make_train_step(model_def, optim, loss_fn, shardings, mesh,
                                    sparse_update=sparse_update)
    state, metrics = step(state, batch)
    results[table_dtype] = (initial, jax.device_get(state), metrics)
  initial, low, low_metrics = results["bfloat16"]
  _, ref, ref_metrics = results["float32"]
  assert low_metrics["learning/loss"] == ref_metrics["learning/loss"]
  jax.tree.map(np.testing.assert_array_equal, (low.params, low.row_state),
               (ref.params, ref.row_state))
  for path, table in jax.tree_util.tree_leaves_with_path(low.tables):
    want = jax.tree_util.tree_leaves_with_path(ref.tables)
    assert table.dtype == jnp.bfloat16
    np.testing.assert_array_equal(table, dict(want)[path].astype(jnp.bfloat16), err_msg=path)
  moved = [np.any(a != b) for a, b in zip(jax.tree.leaves(low.tables),
                                          jax.tree.leaves(initial.tables))]
  assert all(moved)  # every table (user, items, side tables) took updates in bfloat16


@pytest.mark.parametrize("value", ["float16", "bf16", "fp32", "", None])
def test_bad_compute_dtype_is_refused_naming_the_key(value):
  with pytest.raises(ValueError, match=r"^model\.compute_dtype must be one of"):
    model_config.validate(tiny(compute_dtype=value))
  with pytest.raises(ValueError, match=r"^model\.embedding\.table_dtype must be one of"):
    model_config.validate(tiny(**{"embedding.table_dtype": value}))
