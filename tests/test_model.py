"""The Moment&Cross model: shapes for every switch, the trainer's interface, GSU/ESU masking,
gradients, sharding metadata on a mesh, long histories, config validation, costs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcjax.config import load_config
from mcjax.model import build_model, costs, gsu, ranking_score
from mcjax.model import config as model_config
from mcjax.model.embedding import Embedding
from mcjax.contract import schema

T = len(schema.TASKS)


# What the model tests cover beyond the trainer's `tiny` config (which keeps compiles short):
# recent-live attention and per-task experts.
MODEL_TEST_OVERRIDES = {"esu.recent_n": 3, "towers.shared_experts": 2, "towers.task_experts": 1}


def tiny(**overrides):
  """The `tiny` named config's model section, with MODEL_TEST_OVERRIDES and then ``overrides``
  (dotted keys) applied."""
  cfg = load_config("tiny").model
  for key, value in {**MODEL_TEST_OVERRIDES, **overrides}.items():
    node = cfg
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return cfg


def jit_forward(model):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))
  return lambda b: fn(state, b)


@pytest.fixture(scope="module")
def model_a():
  """The numeric tests' model (PLE, soft GSU, author-level outputs; batches (4, 8, 6)) and
  one jitted function giving (ids, rows, model(batch), apply_rows(batch, rows))."""
  cfg = tiny(**{"towers.kind": "ple", "contrastive.author_level": True})
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, batch):
    m = nnx.merge(graphdef, state)
    ids = m.lookup_ids(batch)
    rows = m.gather(ids)
    return ids, rows, m(batch), m.apply_rows(batch, rows, train=False)

  return cfg, model, lambda batch: run(state, batch)


@pytest.mark.parametrize("overrides", [
    {}, {"towers.kind": "ple"}, {"gsu.mode": "hard_author"}, {"gsu.mode": "hard_category"},
    {"use_crowd": False}, {"use_sv_history": False}, {"use_lv_history": False},
    {"use_sv_history": False, "use_lv_history": False, "contrastive.author_level": True},
    {"contrastive.author_level": True, "towers.kind": "ple", "esu.recent_n": 0},
])
def test_output_shapes(overrides):
  cfg = tiny(**overrides)
  model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, b: nnx.merge(graphdef, s)(b), state,
                       schema.dummy_batch(3, 6, 5))
  expected = {"logits": (3, T), "sv_interest": (3, 8), "lv_interest": (3, 8)}
  if cfg.contrastive.author_level:
    expected.update(author_sv=(3, 8), author_lv=(3, 8))
  assert {k: v.shape for k, v in out.items()} == expected
  assert all(v.dtype == jnp.float32 for v in out.values())
  has_sv = any(t.startswith("sv") for t in nnx.state(model, Embedding)["tables"])
  assert has_sv == (cfg.use_sv_history or cfg.contrastive.author_level)


def test_call_equals_apply_rows_of_gathered_rows(model_a):
  _, model, run = model_a
  ids, rows, a, b = run(schema.dummy_batch(4, 8, 6, seed=3))
  for t, r in rows.items():
    for piece, i in zip(r, ids[t], strict=True):
      np.testing.assert_array_equal(piece, np.asarray(getattr(model.tables, t)[...])[i])
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
    assert bool(jnp.isfinite(a[k]).all())
  assert set(model.table_names) == set(model.table_sizes) == set(ids) | set(model.inline_tables)
  assert set(model.inline_tables) == {"live_side", "sv_side"}
  _, tables, _ = nnx.split(model, Embedding, nnx.Param)
  assert len(jax.tree.leaves(tables)) == len(model.table_names)


def test_gsu_never_selects_padding():
  scores = jnp.array([[1.0, 2.0, 3.0, 100.0, 50.0],    # len 3: padding scores highest
                      [5.0, 1.0, 9.0, 7.0, 8.0],       # len 5: all valid
                      [9.0, 9.0, 9.0, 9.0, 9.0]])      # len 0: nothing valid
  idx, valid, top = gsu.select(scores, jnp.array([3, 5, 0]), 4)
  np.testing.assert_array_equal(idx[0, :3], [2, 1, 0])
  np.testing.assert_array_equal(valid, [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(idx[1], [2, 4, 3, 0])
  match = jnp.array([[True, False, True, True, True]])  # the padded slots 3, 4 match too
  idx, valid, bias = gsu.search("hard_author", 3, jnp.array([3]), match=match)
  np.testing.assert_array_equal(idx[0, :2], [0, 2])  # most recent matching first
  np.testing.assert_array_equal(valid[0], [True, True, False])
  q = jnp.ones((1, 2))
  keys = jnp.array([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])  # padding would win
  idx, valid, bias = gsu.search("soft", 2, jnp.array([2]), query=q, keys=keys)
  np.testing.assert_array_equal(idx[0], [1, 0])
  np.testing.assert_allclose(bias[0], [2.0, 1.0])


def _noisy_padding(batch):
  """A copy of batch with random padded history slots (authors = the candidate's)."""
  noisy = {k: v.copy() for k, v in batch.items()}
  rng = np.random.default_rng(9)
  for dom, names in (("sv", schema.SV_FIELDS), ("lv", schema.LV_FIELDS)):
    pad = np.arange(noisy[f"{dom}_item"].shape[1])[None, :] >= batch[f"{dom}_len"][:, None]
    for name in names:
      noise = rng.integers(1, 10**6, pad.shape).astype(noisy[name].dtype)
      noisy[name] = np.where(pad, noise, noisy[name])
    noisy[f"{dom}_author"] = np.where(pad, batch["author_id"][:, None], noisy[f"{dom}_author"])
  return noisy


@pytest.mark.parametrize("mode", ["soft", "hard_author"])
def test_output_invariant_to_padding_contents(mode, model_a):
  if mode == "soft":
    fwd = lambda b: model_a[2](b)[2]  # noqa: E731
  else:
    fwd = jit_forward(build_model(tiny(**{"gsu.mode": mode}), rngs=nnx.Rngs(0)))
  batch = schema.dummy_batch(4, 8, 6, seed=1)
  batch["sv_len"] = np.array([0, 3, 8, 5], np.int32)
  batch["lv_len"] = np.array([2, 0, 6, 1], np.int32)
  a, b = fwd(batch), fwd(_noisy_padding(batch))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_empty_histories_are_finite_and_gradients_finite(model_a):
  _, model, _ = model_a
  empty = schema.dummy_batch(4, 8, 6)
  empty["sv_len"][:] = 0
  empty["lv_len"][:] = 0
  graphdef, tables, dense = nnx.split(model, Embedding, nnx.Param)

  @jax.jit
  def grads(dense, batch):
    rows = model.gather(model.lookup_ids(batch))

    def loss(dense, rows):
      out = nnx.merge(graphdef, tables, dense).apply_rows(batch, rows, train=True)
      return sum(jnp.sum(v ** 2) for v in out.values()), out

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(dense, rows)

  for batch in (empty, schema.dummy_batch(4, 8, 6)):
    (g_dense, g_rows), out = grads(dense, batch)
    assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves((g_dense, g_rows, out)))
  assert float(jnp.abs(g_rows["sv_item"][0]).sum()) > 0
  assert float(jnp.abs(g_dense["lv"]["esu"]["q"]["kernel"][...]).sum()) > 0


def test_build_with_and_without_mesh(model_a):
  cfg, model_c, _ = model_a
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(model_config.LOGICAL_RULES):
    model = build_model(cfg, rngs=nnx.Rngs(0))
    specs = nnx.get_partition_spec(nnx.state(model, Embedding))
    assert specs["tables"]["user"].get_value() == jax.P("model", None)
    assert specs["tables"]["user_side"].get_value() == jax.P(None, None)
    row_sharded = jax.NamedSharding(mesh, jax.P("model", None))
    assert model.tables.sv_item[...].sharding.is_equivalent_to(row_sharded, 2)
    assert model.tables.live_side[...].sharding.is_fully_replicated
  with jax.set_mesh(mesh):  # a mesh but no rules: built unsharded, metadata only
    model_b = build_model(cfg, rngs=nnx.Rngs(0))
  assert model_c.tables.user.get_metadata()["out_sharding"] == ("vocab", "embed")
  assert model_c.tables.user_side.get_metadata()["out_sharding"] == ("vocab_small", "embed")
  assert model_b.tables.user.get_metadata()["out_sharding"] == ("vocab", "embed")
  np.testing.assert_array_equal(model.tables.user[...], model_c.tables.user[...])


def test_history_of_10000_items():
  model = build_model(tiny(**{"gsu.top_k": 32}), rngs=nnx.Rngs(0))
  out = jit_forward(model)(schema.dummy_batch(2, 10_000, 10_000))
  assert out["logits"].shape == (2, T) and bool(jnp.isfinite(out["logits"]).all())


@pytest.mark.parametrize("key, value, message", [
    ("gsu.top_k", 20_000, "model.gsu.top_k must be <= 10000"),
    ("gsu.mode", "fuzzy", "model.gsu.mode"),
    ("towers.kind", "mmoe", "model.towers.kind"),
    ("esu.num_heads", 3, "model.esu.num_heads"),
    ("embedding.dim", 0, "model.embedding.dim"),
    ("ranking.fusion", "max", "model.ranking.fusion"),
    ("crowd.drop", ("viewers_later",), "model.crowd.drop"),
    ("crowd.drop", schema.CROWD_FEATURES, "model.crowd.drop leaves no crowd feature"),
])
def test_config_validation_names_the_key(key, value, message):
  model_config.validate(model_config.default())
  cfg = model_config.default()
  node = cfg
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match=message):
    model_config.validate(cfg)
  cfg = model_config.default()
  del cfg.ranking.weights["gtr"]
  with pytest.raises(ValueError, match="model.ranking.weights"):
    model_config.validate(cfg)


def test_ranking_score():
  cfg = model_config.default()
  probs = jnp.array([[0.5, 0.2, 0.1, 0.1, 0.1, 0.1], [0.1] * 6])
  w = np.array([cfg.ranking.weights[t] for t in schema.TASKS])
  np.testing.assert_allclose(ranking_score(probs, cfg), np.prod(np.asarray(probs) ** w, -1),
                             rtol=1e-5)
  cfg.ranking.fusion = "weighted_sum"
  np.testing.assert_allclose(ranking_score(probs, cfg.ranking), np.asarray(probs) @ w,
                             rtol=1e-5)


def test_costs():
  cfg = tiny(use_sv_history=False, use_crowd=False, **{"esu.recent_n": 0})  # compiles fast
  model = build_model(cfg, rngs=nnx.Rngs(0))
  counts = costs.param_count(model)
  assert counts["tables"] == sum(r * d for r, d in model.table_sizes.values())
  assert counts["dense"] > 0 and counts["total"] == counts["tables"] + counts["dense"]
  batch = schema.dummy_batch(4, 6, 5)
  fwd = costs.flops_per_example(model, batch)
  both = costs.flops_per_example(model, batch, backward=True)
  assert 0 < fwd < both


def test_crowd_drop_leaves_those_features_out_of_the_model():
  drop = ("exposures_all,live_age_s",)  # as --config.model.crowd.drop=a,b arrives
  model = build_model(tiny(**{"crowd.drop": drop}), rngs=nnx.Rngs(0))
  assert model.crowd.mlp.layers[0].in_features == len(schema.CROWD_FEATURES) - 2
  fwd = jit_forward(model)
  batch = schema.dummy_batch(4, 8, 6, seed=0)
  base = np.asarray(fwd(batch)["logits"])
  for name, moves in (("exposures_all", False), ("live_age_s", False), ("clicks_30s", True)):
    b = dict(batch)
    b["crowd"] = np.array(batch["crowd"])
    b["crowd"][:, schema.CROWD_INDEX[name]] += 50.0
    assert (not np.allclose(np.asarray(fwd(b)["logits"]), base)) == moves, name


def test_crowd_wide_adds_a_linear_map_of_the_crowd_to_the_logits():
  cfg = tiny(**{"crowd.drop": ("live_age_s",), "crowd.wide": True})
  model = build_model(cfg, rngs=nnx.Rngs(0))
  plain = build_model(tiny(**{"crowd.drop": ("live_age_s",)}), rngs=nnx.Rngs(0))
  batch = schema.dummy_batch(4, 8, 6, seed=0)
  # starts at 0, and the other layers start where they do without it
  np.testing.assert_array_equal(np.asarray(model(batch)["logits"]),
                                np.asarray(plain(batch)["logits"]))
  kernel = np.random.default_rng(0).normal(size=model.crowd_wide.kernel.value.shape)
  model.crowd_wide.kernel.value = jnp.asarray(kernel, jnp.float32)
  keep = [i for i, n in enumerate(schema.CROWD_FEATURES) if n != "live_age_s"]
  wide = np.log1p(np.maximum(np.asarray(batch["crowd"], np.float32)[:, keep], 0)) @ kernel
  np.testing.assert_allclose(np.asarray(model(batch)["logits"]),
                             np.asarray(plain(batch)["logits"]) + wide, rtol=2e-5, atol=2e-5)
