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

from mcjax.model import build_model, gsu
from mcjax.samples import schema
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
