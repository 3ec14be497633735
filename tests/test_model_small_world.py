"""The model on real samples: forward + backward on a batch from the `small` simulated world
for every ablation switch; GSU top-k against a numpy reference; ESU permutation invariance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcjax import losses
from mcjax.model import build_model, esu, gsu
from mcjax.moment import MomentConfig
from mcjax.moment.engine import SampleBuilder
from mcjax.contract import batch as batch_lib
from mcjax.sim import world
from mcjax.contract.batch import host_batch
from test_model import tiny

# every ablation switch is flipped in at least one of these (few compiles: CPU time is dear)
SWITCHES = [
    {},
    {"use_crowd": False, "use_match_features": False, "towers.kind": "ple",
     "contrastive.author_level": True},
    {"use_sv_history": False, "gsu.mode": "hard_author"},
    {"use_lv_history": False, "gsu.mode": "hard_category"},
]


@pytest.fixture(scope="module")
def small_world_batch(tmp_path_factory):
  log = world.build(str(tmp_path_factory.mktemp("w") / "world"), "small", 3)
  table = next(SampleBuilder(log, MomentConfig(sv_hist_len=16, lv_hist_len=8))
               .tables("train", chunk_rows=4096))
  rows = np.random.default_rng(0).choice(len(table["user_id"]), 64, replace=False)
  from mcjax.samples.table import take_rows
  batch = batch_lib.pad_table(take_rows(table, np.sort(rows)), 16, 8)
  batch["weight"] = np.ones(64, np.float32)
  assert batch["sv_len"].max() > 0 and batch["lv_len"].max() > 0
  return host_batch(batch)


@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda o: ",".join(o) or "default")
def test_forward_backward_on_small_world(small_world_batch, overrides):
  cfg = tiny(**overrides)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  lcfg = losses.loss_config()
  if overrides.get("contrastive.author_level"):
    lcfg.contrastive_author_weight = 0.1

  def loss(state, batch):
    return losses.compute_loss(nnx.merge(graphdef, state)(batch), batch, lcfg)[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(state, small_world_batch)
  assert np.isfinite(float(value))
  flat = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in flat)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in flat) > 0


def test_gsu_topk_matches_numpy_reference():
  rng = np.random.default_rng(0)
  b, n, d, k = 5, 40, 8, 6
  query, keys = rng.normal(size=(b, d)), rng.normal(size=(b, n, d))
  length = np.array([0, 3, 6, 17, 40])
  idx, valid, _ = gsu.search("soft", k, jnp.asarray(length), query=jnp.asarray(query),
                             keys=jnp.asarray(keys))
  idx, valid = np.asarray(idx), np.asarray(valid)
  for i in range(b):
    scores = keys[i, :length[i]] @ query[i]
    want = np.argsort(-scores, kind="stable")[:k]
    assert valid[i].sum() == min(k, length[i])
    np.testing.assert_array_equal(np.sort(idx[i][valid[i]]), np.sort(want))


def test_esu_invariant_to_permuting_the_top_k():
  with nnx.use_eager_sharding(False):
    att = esu.TargetAttention(8, 2, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  query = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  bias = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  perm = np.array([4, 2, 0, 3, 1])
  a = att(query, items, mask, bias)
  b = att(query, items[:, perm], mask[:, perm], bias[:, perm])
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
