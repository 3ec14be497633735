"""The model's fast forward pass against a plain reference written out here: every feature's
rows gathered at every history position, concatenated and multiplied (no folding of small
tables into their projections), behaviour gathered at all positions then taken at the GSU's
top-k, per-item key/value projections in the ESU and the towers' input broadcast per task.
Same parameters, so outputs and gradients must agree up to float rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcjax.model import build_model, gsu, matches
from mcjax.model import embedding as E
from mcjax.model.encoders import DOMAIN_BEHAVIOUR, DOMAIN_CONTENT
from mcjax.contract import schema
from test_model import tiny

_USER = ("user", "user_age", "user_gender", "user_activity", "hour_of_day")


def _linear(layer, x):
  y = x @ layer.kernel[...]
  return y + layer.bias[...] if layer.bias is not None else y


def _mlp(mlp, x):
  for i, layer in enumerate(mlp.layers):
    x = _linear(layer, x)
    if i + 1 < len(mlp.layers):
      x = jax.nn.gelu(x)
  return x


def _bank(bank, x):  # x [B, n, d_in]
  for i, (w, b) in enumerate(zip(bank.kernels, bank.biases)):
    x = jnp.einsum("bni,nio->bno", x, w[...]) + b[...]
    if i + 1 < len(bank.kernels):
      x = jax.nn.gelu(x)
  return x


def _esu(att, query, items, mask, bias=None):
  b, n, d = items.shape
  h = att.num_heads
  q = _linear(att.q, query).reshape(b, h, d // h)
  k = _linear(att.k, items).reshape(b, n, h, d // h)
  v = _linear(att.v, items).reshape(b, n, h, d // h)
  logits = jnp.einsum("bhe,bnhe->bhn", q, k) / jnp.sqrt(jnp.float32(d // h))
  if bias is not None:
    logits = logits + bias[:, None, :] / jnp.sqrt(jnp.float32(d))
  logits = jnp.where(mask[:, None, :], logits, -1e30)
  weights = jax.nn.softmax(logits, axis=-1) * mask[:, None, :]
  attended = jnp.einsum("bhn,bnhe->bhe", weights, v).reshape(b, d)
  return jnp.where(mask.any(-1, keepdims=True), _linear(att.out, attended), att.null[...])


def _cross(cross, x0):  # DCN-v2, written out: x_{l+1} = x0 * (W_l x_l + b_l) + x_l
  x = x0
  for i, up in enumerate(cross.up):
    w = up.kernel[...] if not cross.rank else cross.down[i].kernel[...] @ up.kernel[...]
    x = x0 * (x @ w + up.bias[...]) + x
  return x


def _towers(towers, x):
  t = towers.n_tasks
  if towers.cross is not None:
    x = _cross(towers.cross, x)
  task_in, shared_in = jnp.broadcast_to(x[:, None], (x.shape[0], t, x.shape[-1])), x
  for level in towers.levels:
    b, e, s = x.shape[0], level.n_task_experts, level.n_shared
    shared = _bank(level.shared_experts,
                   jnp.broadcast_to(shared_in[:, None], (b, s, shared_in.shape[-1])))
    experts = [jnp.broadcast_to(shared[:, None], (b, t) + shared.shape[1:])]
    if e:
      own = _bank(level.task_experts, jnp.repeat(task_in, e, axis=1))
      experts.insert(0, own.reshape(b, t, e, -1))
    per_task = jnp.concatenate(experts, axis=2)
    gates = jax.nn.softmax(_bank(level.task_gates, task_in), axis=-1)
    task_out = jnp.einsum("bte,bted->btd", gates, per_task)
    if level.shared_gate is not None:
      everything = jnp.concatenate([per_task[:, :, :e].reshape(b, -1, shared.shape[-1]),
                                    shared], axis=1)
      mix = jax.nn.softmax(_linear(level.shared_gate, shared_in), axis=-1)
      shared_in = jnp.einsum("be,bed->bd", mix, everything)
    task_in = task_out
  return _bank(towers.heads, task_in)[..., 0]


def reference_forward(model, batch):
  """The model's function, computed the plain way (see the module docstring)."""
  cfg = model.cfg
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  r = {}
  for f in E.feature_plan(cfg):  # every feature, every position
    ids = E.hash_ids(E.raw_feature(f, batch, cfg), f.salt, cfg.embedding.vocab[f.table])
    r[f.name] = getattr(model.tables, f.table)[...][ids]
  cand = _linear(model.lv_encoder.content_proj,
                 jnp.concatenate([r["live"], r["author"], r["live_category"]], -1))
  parts = [r[k] for k in _USER] + [cand, r["author_fans"]]
  out = {}
  for dom, null in (("lv", model.lv_null), ("sv", model.sv_null)):
    if null is not None:
      out[f"{dom}_interest"] = jnp.broadcast_to(null[...],
                                                (batch["user_id"].shape[0], cfg.d_model))
      continue
    enc, branch = model.encoder(dom), model.branches[dom]
    length = batch[f"{dom}_len"]
    query = _linear(branch.query, cand)
    content = _linear(enc.content_proj, jnp.concatenate(
        [r[f"{dom}_{s}"] for s in DOMAIN_CONTENT[dom]], -1))
    behaviour = jnp.concatenate([r[f"{dom}_{s}"] for s in DOMAIN_BEHAVIOUR[dom]], -1)
    match = None
    if cfg.gsu.mode == "hard_author":
      match = batch[f"{dom}_author"] == batch["author_id"][:, None]
    idx, valid, bias = gsu.search(cfg.gsu.mode, cfg.gsu.top_k, length, query=query,
                                  keys=content, match=match)

    def item(c, bh, enc=enc):
      return c + _mlp(enc.item_mlp, jnp.concatenate([c, bh], -1))

    items = item(gsu.take(content, idx), gsu.take(behaviour, idx))
    interest = _esu(branch.esu, query, items, valid, bias)
    parts.append(interest)
    if dom == "lv" and cfg.esu.recent_n > 0:
      n = min(cfg.esu.recent_n, content.shape[1])
      parts.append(_esu(model.lv_recent_esu, query, item(content[:, :n], behaviour[:, :n]),
                        gsu.valid_positions(length, n)))
    out[f"{dom}_interest"] = _linear(branch.interest, interest)
  if cfg.use_crowd:
    parts.append(model.crowd(batch["crowd"]))
  if cfg.use_match_features and model.match_domains:
    parts.append(jax.nn.relu(_linear(model.matches,
                                     matches.match_features(batch, model.match_domains,
                                                            cfg.match_set))))
  out["logits"] = _towers(model.towers, jnp.concatenate(parts, -1))
  if cfg.contrastive.author_level:
    out["author_sv"] = _linear(model.author_sv_proj, r["author_in_sv"])
    out["author_lv"] = _linear(model.author_lv_proj, r["author"])
  return out


@pytest.mark.parametrize("overrides", [
    {"towers.kind": "ple", "contrastive.author_level": True},
    {"gsu.mode": "hard_author", "towers.task_experts": 2, "gsu.top_k": 40},
    {"use_sv_history": False, "esu.recent_n": 0},
    {"match_set": "affinity"},
    {"match_set": "affinity_user"},
    {"match_set": "affinity_log"},
    {"towers.cross_layers": 2},
    {"towers.cross_layers": 1, "towers.cross_rank": 8, "towers.kind": "ple"},
])
def test_fast_forward_and_gradients_equal_reference(overrides):
  cfg = tiny(**overrides)
  cfg.embedding.vocab.sv_side = 16  # fewer rows than positions: folded into projections
  model = build_model(cfg, rngs=nnx.Rngs(0))
  batch = schema.dummy_batch(6, 9, 7, seed=4)
  batch["sv_len"] = np.array([0, 3, 9, 5, 9, 1], np.int32)
  batch["lv_len"] = np.array([2, 0, 7, 7, 4, 6], np.int32)
  for dom in ("sv", "lv"):  # some history items by the candidate's author (hard search)
    batch[f"{dom}_author"][:, ::2] = batch["author_id"][:, None]
  graphdef, state = nnx.split(model)

  def loss(state, fn):
    out = fn(nnx.merge(graphdef, state), batch)
    return sum(jnp.sum(jnp.sin(v)) for v in out.values()), out

  fast = jax.jit(jax.grad(lambda s: loss(s, lambda m, b: m(b)), has_aux=True))
  ref = jax.jit(jax.grad(lambda s: loss(s, reference_forward), has_aux=True))
  (g_fast, out_fast), (g_ref, out_ref) = fast(state), ref(state)
  assert set(out_fast) == set(out_ref)
  for k in out_ref:
    np.testing.assert_allclose(out_fast[k], out_ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
  flat_fast, flat_ref = nnx.to_flat_state(g_fast), nnx.to_flat_state(g_ref)
  for (path, a), (_, b) in zip(flat_fast, flat_ref):
    np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-6, err_msg=str(path))
  side = g_ref["tables"]["live_side"][...]
  assert float(jnp.abs(side).sum()) > 0  # the inline tables do get gradients


def test_take_matmul_folded_equals_gathered():
  from mcjax.model import layers
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(7, 4)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(12, 5)).astype(np.float32))
  ids = jnp.asarray(rng.integers(0, 7, (3, 4, 3)).astype(np.int32))  # 12 positions > 7 rows
  plain = table[ids].reshape(3, 4, 12) @ kernel
  np.testing.assert_allclose(layers.take_matmul(table, ids, kernel), plain, rtol=1e-5,
                             atol=1e-6)
  few = ids[:1, :2]  # 2 positions < 7 rows: gathered, then multiplied
  np.testing.assert_allclose(layers.take_matmul(table, few, kernel), plain[:1, :2], rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="kernel"):
    layers.take_matmul(table, ids, kernel[:8])
