"""The two-stage GSU (``model.gsu.approx``): with exact (f32) pre-scores the model's outputs
and gradients equal the plain reference's; the approximate pre-scores (bf16, simhash) find
most of the exact top-k on planted data and are deterministic; on a mesh the pre-score reads
each row on its own shard and all-reduces only [B/data, L] scores; the train step gathers,
differentiates and updates only the kept positions."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import gsu_recall
from mcjax.model import build_model, gsu
from mcjax.contract import schema
from test_model import tiny
from test_model_reference import reference_forward


def _batch():
  batch = schema.dummy_batch(6, 40, 30, seed=4)
  batch["sv_len"] = np.array([0, 3, 40, 25, 9, 1], np.int32)
  batch["lv_len"] = np.array([2, 0, 30, 7, 4, 16], np.int32)
  for dom in ("sv", "lv"):  # some history items by the candidate's author (hard search)
    batch[f"{dom}_author"][:, ::3] = batch["author_id"][:, None]
  return batch


@pytest.mark.parametrize("overrides", [
    {"towers.kind": "ple", "contrastive.author_level": True},
    {"gsu.mode": "hard_author"},
])
def test_f32_two_stage_equals_reference(overrides):
  cfg = tiny(**overrides, **{"gsu.approx": "f32", "gsu.candidates": 6})
  cfg.embedding.vocab.sv_side = 16  # fewer side rows than positions: scored per row
  model = build_model(cfg, rngs=nnx.Rngs(0))
  batch = _batch()
  graphdef, state = nnx.split(model)

  def loss(state, fn):
    out = fn(nnx.merge(graphdef, state), batch)
    return sum(jnp.sum(jnp.sin(v)) for v in out.values()), out

  fast = jax.jit(jax.grad(lambda s: loss(s, lambda m, b: m(b)), has_aux=True))
  ref = jax.jit(jax.grad(lambda s: loss(s, reference_forward), has_aux=True))
  (g_fast, out_fast), (g_ref, out_ref) = fast(state), ref(state)
  for k in out_ref:
    np.testing.assert_allclose(out_fast[k], out_ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
  for (path, a), (_, b) in zip(nnx.to_flat_state(g_fast), nnx.to_flat_state(g_ref)):
    np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-6, err_msg=str(path))
  ids = jax.jit(lambda s: nnx.merge(graphdef, s).lookup_ids(batch))(state)
  assert ids["sv_item"][0].shape == (6, 6)  # 40 positions cut to the 6 candidates
  assert ids["live_item"][1].shape == (6, 3 + 6)  # live: recent 3 + 6 candidates


@pytest.mark.parametrize("kind,min_recall", [("bf16", 0.95), ("simhash", 0.8)])
def test_approx_prescores_recall_exact_top_k(kind, min_recall):
  """Planted structure (benchmarks.gsu_recall): most of the exact top-32 survives the cut to
  64 candidates; the cut is deterministic and never keeps a padding position."""
  triples = gsu_recall.planted()
  length = jnp.full((16,), 1900, jnp.int32)  # the last positions are padding
  assert gsu_recall.recall(kind, triples, length, 32, 64) >= min_recall
  cut = jax.jit(lambda t: gsu.preselect(gsu.owner_scores(kind, t), length, 0, 64)[0])
  cand = cut(triples)
  assert int(cand.max()) < 1900
  again = jax.jit(lambda t: gsu.preselect(gsu.owner_scores(kind, t), length, 0, 64)[0])
  np.testing.assert_array_equal(cand, again(triples))  # a second compilation, same cut


def test_preselect_keeps_recent_and_valid_prefix():
  scores = jnp.asarray([[5., 1., 9., 7., 3., 8.], [5., 1., 9., 7., 3., 8.]])
  positions, length = gsu.preselect(scores, jnp.asarray([6, 2]), recent=1, candidates=2)
  np.testing.assert_array_equal(positions[0], [0, 2, 5])  # recent 0, then the best two
  np.testing.assert_array_equal(positions[1, :2], [0, 1])  # length 2: 0, then 1 (valid)
  np.testing.assert_array_equal(length, [3, 2])
  ints = jnp.asarray([[3, 3, 3, 3]], jnp.int8)  # ties: towards the more recent position
  np.testing.assert_array_equal(gsu.preselect(ints, jnp.asarray([4]), 0, 2)[0], [[0, 1]])


def test_owner_scores_on_a_mesh_send_scores_not_rows():
  from mcjax.runtime import step as step_lib
  """2 x 4 mesh, tables row-sharded on "model" (traced under the mesh, as the train step
  is): the same scores as one device, and the only collective over "model" is one all-reduce of [B/data, L] (no [.., L, dim] rows)."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  triples = gsu_recall.planted(batch=8, length=300, rows=4000)
  table_specs = (P("model", None), P())  # item rows sharded, author table whole
  on_mesh = [(jax.device_put(t, NamedSharding(mesh, spec)),
              jax.device_put(i, NamedSharding(mesh, P("data", None))),
              jax.device_put(u, NamedSharding(mesh, P("data", None))))
             for (t, i, u), spec in zip(triples, table_specs)]
  for kind in ("f32", "simhash"):
    one = jax.jit(lambda t, kind=kind: gsu.owner_scores(kind, t))(triples)
    fn = jax.jit(step_lib.under_mesh(lambda t, kind=kind: gsu.owner_scores(kind, t), mesh))
    sharded = fn(on_mesh)
    np.testing.assert_allclose(np.asarray(sharded, np.float32), np.asarray(one, np.float32),
                               rtol=1e-5, atol=1e-5)
    hlo = fn.lower(on_mesh).compile().as_text()
    reduces = re.findall(r"= (\S+) all-reduce\(", hlo)
    assert reduces and all(r.split("{")[0] in ("f32[4,300]", "s8[4,300]") for r in reduces), \
        reduces


def test_train_step_f32_two_stage_on_a_mesh_equals_reference_step():
  """The real train step (sparse row updates) with the f32 two-stage search on a 2 x 4 mesh
  (row-sharded tables: pre-scores on the owning shards) leaves the state of the reference
  search on one device; so does the dense full-table step (tables differentiated)."""
  import functools

  from mcjax import losses
  from mcjax.runtime import mesh as mesh_lib
  from mcjax.runtime import state as state_lib
  from mcjax.runtime import step as step_lib

  optim = state_lib.OptimConfig()
  loss_fn = functools.partial(losses.compute_loss, cfg=losses.loss_config())
  batch = schema.dummy_batch(16, 12, 10, seed=3)
  results = []
  for approx, shape, sparse_update in (("off", (1, 1), True), ("f32", (2, 4), True),
                                       ("f32", (1, 1), False)):
    cfg = tiny(**{"gsu.approx": approx, "gsu.candidates": 4})
    mesh = mesh_lib.make_mesh(shape, devices=jax.devices()[:shape[0] * shape[1]])
    model_def, state, shardings = state_lib.create_train_state(
        functools.partial(build_model, cfg), mesh, optim)
    step = step_lib.make_train_step(model_def, optim, loss_fn, shardings, mesh,
                                    sparse_update=sparse_update)
    for _ in range(2):
      state, metrics = step(state, batch)
    results.append((jax.device_get(state), float(metrics["learning/loss"])))
  (ref, ref_loss), *others = results
  for got, loss in others:
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), got, ref)


def test_config_validation_of_the_two_stage_keys():
  from mcjax.model import config as model_config
  with pytest.raises(ValueError, match="model.gsu.approx"):
    model_config.validate(tiny(**{"gsu.approx": "lsh"}))
  with pytest.raises(ValueError, match="model.gsu.candidates"):
    model_config.validate(tiny(**{"gsu.approx": "simhash", "gsu.candidates": 2}))
  model_config.validate(tiny(**{"gsu.approx": "off", "gsu.candidates": 2}))  # ignored while off


def test_top_k_under_a_mesh_stays_on_each_batch_shard():
  """Traced under a 2 x 4 mesh, ``top_k_indices`` of a batch-sharded array equals the plain
  top-k and its compiled program gathers nothing (each shard sorts its own rows)."""
  from mcjax.runtime import step as step_lib
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  x = jax.random.normal(jax.random.key(0), (8, 300))
  fn = jax.jit(step_lib.under_mesh(lambda v: gsu.top_k_indices(v, 7), mesh))
  sharded = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  np.testing.assert_array_equal(fn(sharded), jax.lax.top_k(x, 7)[1])
  hlo = fn.lower(sharded).compile().as_text()
  assert not re.findall(r"all-gather|all-reduce|all-to-all", hlo)
