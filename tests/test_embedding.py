"""Hashing, tables, lookup/split and collision measurement of mcjax.model.embedding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax.model import collisions
from mcjax.model import config as model_config
from mcjax.model import embedding as E
from mcjax.contract import schema

EXAMPLE_LOG = os.path.join(os.path.dirname(__file__), "..", "data", "example")
CFG = model_config.default()
lookup = jax.jit(lambda batch: E.lookup_ids(CFG, batch))


def test_hash_deterministic_in_range_and_same_in_numpy_and_jnp():
  ids = np.array([0, 1, 2, -1, -(2**31), 2**31 - 1, 123456789], np.int64)
  a = np.asarray(E.hash_ids(ids, "live", 1000))
  b = np.asarray(E.hash_ids(jnp.asarray(ids.astype(np.int32)), "live", 1000))
  c = E.hash_ids(ids, "live", 1000, xp=np)
  assert a.dtype == np.int32 and ((a >= 0) & (a < 1000)).all()
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)
  np.testing.assert_array_equal(a, np.asarray(E.hash_ids(ids, "live", 1000)))
  assert not np.array_equal(a, E.hash_ids(ids, "author", 1000, xp=np))  # salts differ


def test_hash_unseen_and_64bit_ids():
  big = np.array([2**40 + 7, 2**62, -(2**50), 7], np.int64)
  rows = E.hash_ids(big, "user", 97, xp=np)
  assert ((rows >= 0) & (rows < 97)).all()
  assert rows[0] != rows[3] or E.hash_ids(big, "x", 97, xp=np)[0] != E.hash_ids(
      big, "x", 97, xp=np)[3]  # the high word enters the hash
  with pytest.raises(TypeError, match="integer"):
    E.hash_ids(np.array([1.5]), "user", 10)


def test_collision_rate_known_cases():
  assert collisions.collision_rate(np.arange(5), 1, "s") == 1.0
  assert collisions.collision_rate(np.array([3, 3, 3]), 10, "s") == 0.0  # one distinct id
  rows = E.hash_ids(np.arange(200), "s", 50, xp=np)
  a = 0
  b = int(np.flatnonzero(rows == rows[a])[1])  # first id sharing a's row
  c = int(np.flatnonzero(np.bincount(rows, minlength=50)[rows] == 1)[0])  # a row of its own
  assert collisions.collision_rate(np.array([a, b, c, b]), 50, "s") == pytest.approx(2 / 3)


def test_collision_report_from_arrays_and_log():
  cfg = model_config.default()
  rep = collisions.collision_report({"user_id": np.arange(1000), "live_id": np.arange(10)}, cfg)
  assert set(rep) == {"user", "live_item"}
  assert rep["user"]["distinct_ids"] == 1000 and 0 <= rep["user"]["collision_rate"] < 0.05
  rep = collisions.collision_report(EXAMPLE_LOG, cfg)
  assert {"user", "live_item", "sv_item", "sv_side", "live_side"} <= set(rep)
  assert all(0.0 <= v["collision_rate"] <= 1.0 for v in rep.values())


def test_lookup_and_split_rows_shapes():
  cfg = CFG
  batch = schema.dummy_batch(3, 7, 5)
  ids = lookup(batch)
  sizes = E.table_sizes(cfg)
  assert set(ids) | set(E.inline_tables(cfg)) == set(sizes)
  for t, arrays in ids.items():
    assert isinstance(arrays, tuple)
    for i in arrays:
      assert i.dtype == jnp.int32 and int(i.min()) >= 0 and int(i.max()) < sizes[t][0]
  rows = {t: tuple(jnp.zeros(i.shape + (cfg.embedding.dim,)) for i in a)
          for t, a in ids.items()}
  parts = E.split_rows(cfg, batch, rows)
  assert parts["user"].shape == (3, 32) and parts["sv_item"].shape == (3, 7, 32)
  assert parts["lv_author"].shape == (3, 5, 32)
  inline = {f.name for f in E.feature_plan(cfg) if f.inline}
  assert {"sv_gap", "lv_watch", "sv_tag", "live_category"} <= inline
  assert not inline & set(parts)
  bad = dict(rows, user=(rows["user"][0][:2],))
  with pytest.raises(ValueError, match="user"):
    E.split_rows(cfg, batch, bad)


def test_candidate_and_history_share_rows():
  batch = schema.dummy_batch(3, 7, 5)
  batch["lv_item"][:, 0] = batch["live_id"]
  live, history = lookup(batch)["live_item"]
  np.testing.assert_array_equal(live, history[:, 0])


def test_inline_ids_at_positions_equal_all_positions_taken():
  cfg = CFG
  batch = schema.dummy_batch(4, 9, 6, seed=2)
  names = ["sv_action", "sv_progress", "sv_gap"]
  table, every = E.inline_ids(cfg, batch, names)
  assert table == "sv_side" and every.shape == (4, 9, 3)
  by_name = {f.name: f for f in E.feature_plan(cfg)}
  for j, name in enumerate(names):  # hashed exactly as a looked-up feature would be
    f = by_name[name]
    want = E.hash_ids(E.raw_feature(f, batch, cfg), f.salt, cfg.embedding.vocab[f.table])
    np.testing.assert_array_equal(every[..., j], want)
  positions = jnp.asarray(np.random.default_rng(0).integers(0, 9, (4, 5)).astype(np.int32))
  _, taken = E.inline_ids(cfg, batch, names, positions)
  np.testing.assert_array_equal(taken, jnp.take_along_axis(every, positions[..., None], 1))
  with pytest.raises(ValueError, match="one table"):
    E.inline_ids(cfg, batch, ["sv_action", "lv_action"])
