"""General Search Unit: pick the top-k items of a long history (up to 10,000) for a candidate.

Modes (``model.gsu.mode``):
  soft           inner product between the candidate's query vector and each item's content
                 vector; the highest k win.
  hard_author    items by the candidate's author, most recent first (histories are stored most
                 recent first, so recency is -position).
  hard_category  items of the candidate's category, most recent first. Raw category codes are
                 compared, so both domains must use one category code space.

Padding (positions >= the valid length) and, in hard modes, non-matching items score -inf and
never win a slot; ``valid`` marks the slots that hold a real item (fewer than k real items
leave the extra slots invalid, to be masked downstream).

``search`` is the reference: every position scored inside the differentiable forward pass.
With ``model.gsu.approx`` on, the model first cuts each long history to a few candidates
with a pre-score that has no gradient (the two-stage search below, ``preselect`` and
``owner_scores``; ``MomentCross.cut_histories``), then runs ``search`` on the cut history.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mcjax.model import config as model_config


def valid_positions(length, max_len: int):
  """[B, max_len] bool: position < length."""
  return jnp.arange(max_len)[None, :] < jnp.asarray(length)[:, None]


def soft_scores(query, keys):
  """query [B, D], keys [B, L, D] -> inner products [B, L]."""
  return jnp.einsum("bd,bld->bl", query, keys)


def hard_scores(match):
  """match [B, L] bool -> recency scores [B, L] (-position), -inf where not matching."""
  recency = -jnp.arange(match.shape[1], dtype=jnp.float32)
  return jnp.where(match, recency[None, :], -jnp.inf)


def select(scores, length, k: int):
  """Top-k positions of scores [B, L] among the valid ones.

  Returns (idx [B, k'], valid [B, k'], top_scores [B, k']) with k' = min(k, L); invalid slots
  have top score -inf and an arbitrary (in-range) index.
  """
  k = min(k, scores.shape[1])
  masked = jnp.where(valid_positions(length, scores.shape[1]), scores, -jnp.inf)
  idx = top_k_indices(masked, k)
  top = jnp.take_along_axis(masked, idx, axis=1)  # differentiable w.r.t. the scores
  return idx, jnp.isfinite(top), top


def batch_mesh(batch: int):
  """The mesh to split a batch of ``batch`` rows over its "data" axis: the abstract mesh the
  caller traces under (``jax.sharding.use_abstract_mesh``, as ``mcjax.runtime.step`` does),
  or None when there is none, it has no "data" axis, or "data" does not divide the batch."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names or batch % mesh.shape["data"]:
    return None
  return mesh


def _top_k(x, k: int):
  return jax.lax.top_k(x, k)[1].astype(jnp.int32)


def top_k_indices(x, k: int):
  """int32 [B, k] positions of the k largest values of each row of x [B, L] (ties: the lower
  position first), no gradient. ``jax.lax.top_k`` on a batch-sharded array is all-gathered
  by the partitioner (every device sorts the global batch: 2 x 328 MB per device per step at
  2 x 4 devices, batch 8192, 10,000 positions); under a mesh (``batch_mesh``) a
  ``shard_map`` over "data" keeps each shard's rows local (both the CPU and the TPU compiler
  accept it)."""
  x = jax.lax.stop_gradient(x)
  mesh = batch_mesh(x.shape[0])
  if mesh is None:
    return _top_k(x, int(k))
  return jax.shard_map(functools.partial(_top_k, k=int(k)), mesh=mesh,
                       in_specs=P("data", None), out_specs=P("data", None))(x)


def take(x, idx):
  """x [B, L, ...] gathered at idx [B, k] (positions in [0, L)) -> [B, k, ...]."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1, mode="clip")


def search(mode: str, k: int, length, *, query=None, keys=None, match=None):
  """One GSU call. soft needs query and keys; hard modes need match (see module doc).

  Returns (idx, valid, bias): bias [B, k'] is the soft score of each kept item (0 in hard
  modes, and in invalid slots), added to the ESU's attention logits so the soft search's
  query and keys get a gradient.
  """
  if mode == "soft":
    # float32 whatever the compute dtype of query and keys: the top-k and the bias
    scores = soft_scores(query, keys).astype(jnp.float32)
  elif mode in ("hard_author", "hard_category"):
    scores = hard_scores(match)
  else:
    raise ValueError(f"model.gsu.mode must be soft, hard_author or hard_category, got {mode!r}")
  idx, valid, top = select(scores, length, k)
  bias = jnp.where(valid, top, 0.0) if mode == "soft" else jnp.zeros(top.shape, jnp.float32)
  return idx, valid, bias


# --- Two-stage search (``model.gsu.approx`` != "off") -------------------------------------
#
# The reference above scores every history position inside the differentiable forward pass:
# the train step gathers every position's item and author rows (on a mesh with row-sharded
# tables: a masked gather on each shard, then an all-reduce of [B/data, L, dim] rows over
# "model"), computes content vectors, and back-propagates and sparse-updates all L positions,
# although only the top-k receive a gradient (top_k's indices carry none). The two-stage
# search splits it: a pre-score of every position without gradient picks ``candidates``
# positions, the batch's history is cut to them (``take_history``), and the model then runs
# unchanged on that short history (exact scores, gradients, ESU). Item and author partial
# scores are computed on the shard that owns each row (``owner_scores``), so only [B/data, L]
# scores cross chips, never the rows. (Each "model" shard still runs the masked pre-score
# over all B/data x L positions; only the row reads are split. The recent-N of the live
# history is always kept and never pre-scored.)
#
# Pre-scores (``APPROX``):
#   f32      the exact soft score q . content without its constant bias: item . (K_item q) +
#            author . (K_author q) + side features; with candidates >= top_k the selection,
#            the outputs and the gradients equal the reference's up to float rounding.
#   bf16     the same partial scores from bf16 rows and query (fp32 accumulation), summed and
#            all-reduced in bf16 (half the bytes).
#   simhash  ETA-style: 32 random hyperplanes map each item / author row and the query's
#            projection onto it to a 32-bit signature (packed into a uint32); the score is the
#            number of agreeing bits (32 - popcount(xor)) summed over item and author (side
#            features ignored), all-reduced as int8 (a quarter of f32's bytes). A signature
#            depends on the row only: when a table (shard) has no more rows than there are
#            positions, the whole table is signed once and 4-byte signatures are gathered
#            instead of 128-byte rows (same signatures, a cache-resident gather).
# Hard modes pre-score with their exact match-and-recency score (no table read).
#
# With ``model.compute_dtype`` = "bfloat16" the pre-score keeps the precision ``approx`` names
# (``approx`` wins there): the query, computed by the model's layers in bfloat16, is cast to
# float32 and the pre-score runs exactly as above ("f32" in float32, "bf16" from bf16 rows and
# query). ``compute_dtype`` governs the differentiable pass, the exact search over the cut
# history included (its scores come from a bfloat16 matmul; top-k and bias in float32).

APPROX = model_config.GSU_APPROX
SIMHASH_BITS = 32
_SIMHASH_SEED = 0x5EED


def simhash_planes(dim: int) -> np.ndarray:
  """[dim, SIMHASH_BITS] float32 random hyperplanes (a fixed seed: deterministic)."""
  return np.random.default_rng(_SIMHASH_SEED).standard_normal(
      (dim, SIMHASH_BITS)).astype(np.float32)


def _pack_weights():
  """[SIMHASH_BITS, 2] float32: bit j weighs 2^(j mod 16) in 16-bit half j // 16."""
  j = jnp.arange(SIMHASH_BITS, dtype=jnp.uint32)[:, None]
  half = jnp.arange(2, dtype=jnp.uint32)[None, :]
  weight = jnp.left_shift(jnp.uint32(1), j % 16).astype(jnp.float32)
  return jnp.where(j // 16 == half, weight, 0.0)


def simhash(x, planes):
  """[..., dim] -> [...] uint32 signatures: bit j set iff x . planes[:, j] > 0.

  The bits are packed by a matmul into two exact 16-bit halves (floats below 2^16), so XLA
  materialises [..., 2] halves: a gather of signatures then reads 8 bytes per row, where a
  packing reduction would be fused into the gather and re-read each gathered row's 32
  projections (measured ~10x slower on CPU)."""
  bits = (x @ planes > 0).astype(jnp.float32)
  halves = (bits @ _pack_weights()).astype(jnp.uint32)
  return halves[..., 0] | (halves[..., 1] << 16)


def _partial_scores(kind: str, table, ids, u, planes):
  """One table's pre-score part [B, L] of rows table[ids [B, L]] against u [B, dim]: f32
  dot products, bf16 dot products (fp32 accumulation), or simhash agreement counts (int32,
  hyperplanes ``planes`` [dim, SIMHASH_BITS])."""
  if kind == "simhash":
    if table.shape[0] <= ids.size:  # sign the (local) table once, gather 4-byte signatures
      signatures = jnp.take(simhash(table, planes), ids, axis=0, mode="clip")
    else:
      signatures = simhash(jnp.take(table, ids, axis=0, mode="clip"), planes)
    diff = jnp.bitwise_xor(signatures, simhash(u, planes)[:, None])
    return SIMHASH_BITS - jax.lax.population_count(diff).astype(jnp.int32)
  rows = jnp.take(table, ids, axis=0, mode="clip")
  if kind == "f32":  # (bfloat16 tables: their rows, exactly, in float32)
    return jnp.einsum("bld,bd->bl", rows.astype(jnp.float32), u.astype(jnp.float32))
  return jnp.einsum("bld,bd->bl", rows.astype(jnp.bfloat16), u.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)


def _wire_dtype(kind: str):
  """dtype of the summed pre-scores (what crosses chips)."""
  return {"f32": jnp.float32, "bf16": jnp.bfloat16, "simhash": jnp.int8}[kind]


def _sum_scores(kind: str, parts):
  total = parts[0]
  for p in parts[1:]:
    total = total + p
  return total.astype(_wire_dtype(kind))


def _row_axis(mesh, rows: int):
  """The mesh axis a table of ``rows`` rows is read on in ``owner_scores``: "model" when the
  mesh splits it and it divides the rows (where the table is held whole, each shard takes
  its slice locally: no communication), else None (the whole table on every shard)."""
  if "model" in mesh.axis_names and mesh.shape["model"] > 1 and rows % mesh.shape["model"] == 0:
    return "model"
  return None


def _sharded_scores(kind: str, triples, planes, mesh):
  """``owner_scores`` under a mesh: a ``shard_map`` over the batch ("data") and the tables'
  row axes; each shard scores the positions whose row it holds, one psum over "model"."""
  row_axes = [_row_axis(mesh, t[0].shape[0]) for t in triples]

  def local(*args):
    whole, split = [], []
    for i, rows in enumerate(row_axes):
      table, ids, u = args[3 * i:3 * i + 3]
      if rows is None:
        whole.append(_partial_scores(kind, table, ids, u, args[-1]))
        continue
      offset = ids - jax.lax.axis_index(rows) * table.shape[0]
      inside = (offset >= 0) & (offset < table.shape[0])
      part = _partial_scores(kind, table, offset, u, args[-1])
      split.append(jnp.where(inside, part, jnp.zeros((), part.dtype)))
    # a row lives on one "model" shard: the sum over "model" restores its part (the parts
    # of tables held whole are added once, outside the reduction)
    totals = [_sum_scores(kind, whole)] if whole else []
    if split:
      totals = [*totals, jax.lax.psum(_sum_scores(kind, split), "model")]
    return _sum_scores(kind, totals)

  specs = []
  for rows in row_axes:
    specs += [P(rows, None), P("data", None), P("data", None)]
  args = [a for t in triples for a in t] + [planes]
  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs) + (P(),),
                       out_specs=P("data", None))(*args)


def owner_scores(kind: str, triples):
  """Pre-scores [B, L] of history rows against per-example vectors, summed over tables.

  Args:
    kind: "f32", "bf16" or "simhash" (see the section comment).
    triples: (table [rows, dim], ids [B, L] int32 row indices, u [B, dim]) per table.

  Returns [B, L] float32 / bfloat16 / int8 (the dtype that crosses chips). Under a mesh
  (``batch_mesh``) each table is read on the "model" shards that own its rows (``_row_axis``):
  a shard scores the positions whose row it holds (0 elsewhere), and one all-reduce of
  [B/data, L] sums them over "model"; no row leaves its shard. Without a mesh it is the plain
  computation. Not differentiable: call it on ``jax.lax.stop_gradient`` inputs.
  """
  if kind not in APPROX[1:]:
    raise ValueError(f"owner_scores: kind must be one of {APPROX[1:]}, got {kind!r}")
  dims = {t[0].shape[-1] for t in triples}
  if len(dims) != 1:
    raise ValueError(f"owner_scores: tables must share one width, got {sorted(dims)}")
  planes = jnp.asarray(simhash_planes(dims.pop()))
  mesh = batch_mesh(triples[0][1].shape[0])
  if mesh is None:
    return _sum_scores(kind, [_partial_scores(kind, *t, planes) for t in triples])
  return _sharded_scores(kind, triples, planes, mesh)


def side_scores(table, ids, kernel, query):
  """[B, L] soft-score part of side-table content features: sum over the n features of
  query . (table[ids[..., j]] @ kernel block j), for ids [B, L, n] into table [rows, dim],
  kernel [n * dim, d], query [B, d]. With fewer table rows than positions, every row is
  scored once per example ([B, rows]) and the scores are gathered; else the projected rows
  are gathered and dotted."""
  n, dim = ids.shape[-1], table.shape[-1]
  total = jnp.zeros(ids.shape[:-1], jnp.float32)
  for j in range(n):
    proj = table @ kernel[j * dim:(j + 1) * dim]  # [rows, d]
    if table.shape[0] <= ids.shape[1]:
      total += jnp.take_along_axis(query @ proj.T, ids[..., j], axis=1, mode="clip")
    else:
      total += jnp.einsum("bld,bd->bl", jnp.take(proj, ids[..., j], axis=0, mode="clip"),
                          query)
  return total


def preselect(scores, length, recent: int, candidates: int):
  """Positions of a cut history: the ``recent`` most recent ones, then the ``candidates``
  best-scored among the rest (highest first). scores [B, L] (float, or small non-negative
  integers), length [B].

  Returns (positions [B, recent + candidates] int32, new_length [B] int32): the valid
  positions come first (recent ones below the length, then scored ones below it), so the cut
  history keeps the "valid prefix" form of the batch.
  """
  max_len = scores.shape[1]
  pos = jnp.arange(max_len)[None, :]
  keep = (pos >= recent) & (pos < jnp.asarray(length)[:, None])
  kept = scores.astype(jnp.float32)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    # small integer scores (simhash agreements): many ties, broken towards the more recent
    # position by a fraction below 1/2 (exact in float32 for histories up to ~60,000); and
    # float32, because XLA's CPU top_k of integers is a full sort (~50x slower here)
    kept = kept + 0.5 * (1.0 - pos.astype(jnp.float32) / max_len)
  # kept positions outrank excluded ones even at -inf (a hard mode's non-matching item)
  kept = jnp.maximum(kept, jnp.finfo(jnp.float32).min)
  masked = jnp.where(keep, kept, -jnp.inf)
  idx = top_k_indices(masked, candidates)
  length = jnp.asarray(length, jnp.int32)
  if recent:
    head = jnp.broadcast_to(jnp.arange(recent, dtype=jnp.int32), (idx.shape[0], recent))
    idx = jnp.concatenate([head, idx], axis=1)
  new_length = (jnp.minimum(length, recent)
                + jnp.clip(length - recent, 0, candidates)).astype(jnp.int32)
  return idx, new_length


def take_history(batch: dict, fields, length_key: str, positions, new_length) -> dict:
  """A shallow copy of ``batch`` whose history ``fields`` ([B, L, ...]) are taken at
  positions [B, m] and whose ``length_key`` is ``new_length``; other fields are shared."""
  out = dict(batch)
  for name in fields:
    if name in out:
      out[name] = take(jnp.asarray(out[name]), positions)
  out[length_key] = new_length
  return out
