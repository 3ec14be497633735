"""Hashed id features and the embedding tables they index.

Every id-like feature (raw int64 ids, categories, buckets, action bits) is hashed into a
fixed-size table with a salt: ``row = fmix(fmix(fold(id) ^ salt)) mod vocab`` (murmur3's
32-bit finalizer ``fmix``). ``fold_ids`` (``mcjax.contract.batch``) maps a 64-bit id to 32
bits with all 64 bits mixed in: ``fold = lo32 ^ fmix(hi32')``, where ``hi32'`` is the high
word minus the sign extension of the low word, so ``fold`` is the identity for every id in
int32 range, and ids that differ only in their high 32 bits fold apart. The host folds int64
ids before they reach a device (``contract.batch.host_batch``; JAX runs without x64), and
``hash_ids`` folds int64 input itself, so numpy (``collisions.collision_report``) and the
model hash every id identically. Ids never seen before simply hash to a row.

Features of one entity share a salt (``live_id`` and ``lv_item`` both use "live"), so the
candidate and its appearances in the history hit the same row; different features sharing a
table use different salts, so they do not collide systematically. The two domains have
separate item, author and side tables; the user table is shared.

``lookup_ids`` gives each table a tuple of id arrays, one per feature (in ``feature_plan``
order, each of its batch field's shape), so gathering gives each feature's rows in its own
array: no concatenated row buffer to cut up (a copy per feature) or to assemble gradients
into. ``split_rows`` names the gathered arrays by feature. Both run under jit.

*Inline* features (``Feature.inline``) are not looked up: the model hashes and gathers them
itself, from their small side table, inside ``apply_rows`` (``inline_ids``; the train step
differentiates such tables whole, see ``MomentCross.inline_tables``). They are the history
behaviour features (action, watch/progress and time-gap buckets), needed only at the
history positions the GSU keeps and the recent-N, so they are taken at those positions after
the search, then bucketed and hashed there; and the side-table content features (categories,
tags), whose rows only enter a linear map, so the model gathers them from the table's
projection (``layers.take_matmul``).
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mcjax.contract.batch import fmix32, fold_ids
from mcjax.model import features as F
from mcjax.model import layers


class Embedding(nnx.Param):
  """An embedding table (rows, dim): updated sparsely by the trainer, never read densely."""


@dataclasses.dataclass(frozen=True)
class Feature:
  name: str    # key in split_rows' output
  table: str   # embedding table it indexes
  salt: str    # hash salt (shared by features of the same entity)
  field: str   # batch field it is read from (also gives its shape)
  inline: bool = False  # gathered by the model in apply_rows (``inline_ids``), not looked up


def _plan_entries(cfg: ml_collections.ConfigDict):
  yield Feature("user", "user", "user", "user_id")
  yield Feature("user_age", "user_side", "age", "user_age")
  yield Feature("user_gender", "user_side", "gender", "user_gender")
  yield Feature("user_activity", "user_side", "activity", "user_activity")
  yield Feature("hour_of_day", "user_side", "hour", "hour_of_day")
  yield Feature("live", "live_item", "live", "live_id")
  yield Feature("author", "live_author", "author", "author_id")
  yield Feature("live_category", "live_side", "category", "live_category", inline=True)
  yield Feature("author_fans", "live_side", "fans", "author_fans_bucket")
  if cfg.use_lv_history:
    yield Feature("lv_item", "live_item", "live", "lv_item")
    yield Feature("lv_author", "live_author", "author", "lv_author")
    yield Feature("lv_category", "live_side", "category", "lv_category", inline=True)
    yield Feature("lv_action", "live_side", "action", "lv_action", inline=True)
    yield Feature("lv_watch", "live_side", "watch", "lv_watch_s", inline=True)
    yield Feature("lv_gap", "live_side", "gap", "lv_ts_ms", inline=True)
  if cfg.use_sv_history:
    yield Feature("sv_item", "sv_item", "sv_item", "sv_item")
    yield Feature("sv_author", "sv_author", "author", "sv_author")
    yield Feature("sv_category", "sv_side", "category", "sv_category", inline=True)
    yield Feature("sv_tag", "sv_side", "tag", "sv_tag", inline=True)
    yield Feature("sv_action", "sv_side", "action", "sv_action", inline=True)
    yield Feature("sv_progress", "sv_side", "progress", "sv_progress", inline=True)
    yield Feature("sv_gap", "sv_side", "gap", "sv_ts_ms", inline=True)
  if cfg.contrastive.author_level:
    yield Feature("author_in_sv", "sv_author", "author", "author_id")


def feature_plan(cfg: ml_collections.ConfigDict) -> tuple[Feature, ...]:
  """The id features the config uses, in lookup order (``inline`` ones included)."""
  return tuple(_plan_entries(cfg))


def _lookup_plan(cfg: ml_collections.ConfigDict) -> tuple[Feature, ...]:
  return tuple(f for f in feature_plan(cfg) if not f.inline)


def inline_tables(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The tables holding ``inline`` features (read by the model in ``apply_rows``)."""
  return tuple(dict.fromkeys(f.table for f in feature_plan(cfg) if f.inline))


def table_sizes(cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
  """table name -> (rows, dim), for the tables the config uses."""
  used = dict.fromkeys(f.table for f in feature_plan(cfg))
  return {t: (int(cfg.embedding.vocab[t]), int(cfg.embedding.dim)) for t in used}


def salt_of(salt: str | int) -> int:
  """A stable uint32 salt from a name (crc32) or an int."""
  if isinstance(salt, str):
    return zlib.crc32(salt.encode())
  return int(salt) & 0xFFFFFFFF


def hash_ids(ids, salt: str | int, vocab: int, xp=jnp):
  """Row indices (int32, in [0, vocab)) of integer ids of any shape; xp is jnp or numpy.

  64-bit ids are folded first (``fold_ids``, numpy only: JAX holds no int64 without x64), so
  an int64 id and its folded int32 hash to the same row.
  """
  if xp is np or getattr(ids, "dtype", np.dtype(np.int32)).itemsize == 8:
    if isinstance(ids, jax.Array):
      raise TypeError("hash_ids: fold 64-bit ids on the host (fold_ids) before jax")
    ids = fold_ids(ids)
  ids = xp.asarray(ids)
  if ids.dtype.kind not in "iu":
    raise TypeError(f"hash_ids needs integer ids, got dtype {ids.dtype}")
  s = xp.uint32(salt_of(salt))
  lo = ids.astype(xp.int32).astype(xp.uint32)
  with np.errstate(over="ignore"):
    h = fmix32(fmix32(lo ^ s, xp), xp)
    return (h % xp.uint32(vocab)).astype(xp.int32)


def raw_feature(f: Feature, batch: dict, cfg: ml_collections.ConfigDict):
  """The integer values of a feature before hashing (buckets computed here)."""
  x = batch[f.field]
  if f.name in ("lv_gap", "sv_gap"):
    return F.time_gap_bucket(jnp.asarray(batch["query_ts_ms"]), jnp.asarray(x),
                             cfg.features.time_gap_buckets)
  if f.name == "lv_watch":
    return F.watch_bucket(jnp.asarray(x), cfg.features.watch_buckets)
  if f.name == "sv_progress":
    return F.progress_bucket(jnp.asarray(x), cfg.features.progress_buckets)
  return x


def lookup_ids(cfg: ml_collections.ConfigDict, batch: dict) -> dict[str, tuple]:
  """table -> tuple of int32 row-index arrays, one per feature of the table (in plan order,
  each shaped like its batch field; ``inline`` features excluded)."""
  out = {}
  for f in _lookup_plan(cfg):
    ids = hash_ids(raw_feature(f, batch, cfg), f.salt, cfg.embedding.vocab[f.table])
    out[f.table] = out.get(f.table, ()) + (ids,)
  return out


def split_rows(cfg: ml_collections.ConfigDict, batch: dict,
               rows: dict[str, tuple]) -> dict[str, jax.Array]:
  """feature -> its gathered rows (batch[field].shape + (dim,)), from ``gather`` of
  ``lookup_ids`` (``inline`` features excluded)."""
  out, count = {}, {}
  for f in _lookup_plan(cfg):
    i = count[f.table] = count.get(f.table, -1) + 1
    table_rows = rows.get(f.table, ())
    want = tuple(np.shape(batch[f.field]))
    if i >= len(table_rows) or tuple(table_rows[i].shape[:-1]) != want:
      got = tuple(table_rows[i].shape[:-1]) if i < len(table_rows) else "nothing"
      raise ValueError(f"rows[{f.table!r}][{i}] ({f.name}) has leading shape {got}, the batch "
                       f"needs {want}")
    out[f.name] = table_rows[i]
  return out


def inline_ids(cfg: ml_collections.ConfigDict, batch: dict, names,
               positions: jax.Array | None = None) -> tuple[str, jax.Array]:
  """(table, int32 row ids) of the named ``inline`` features (n of them, one table), hashed
  exactly as ``lookup_ids`` hashes the others, stacked on a last axis: [B, L, n] for history
  features ([B, n] for candidate ones), or [B, m, n] at history positions [B, m] (the raw
  values are taken at the positions first, then bucketed and hashed). Gathering the ids
  gives the n features' rows side by side."""
  by_name = {f.name: f for f in feature_plan(cfg) if f.inline}
  plan = [by_name[n] for n in names]
  tables = {f.table for f in plan}
  if len(tables) != 1:
    raise ValueError(f"inline features {list(names)} must share one table, got {tables}")
  values = {"query_ts_ms": batch["query_ts_ms"]}
  for f in plan:
    values[f.field] = jnp.asarray(batch[f.field])
    if positions is not None:
      values[f.field] = jnp.take_along_axis(values[f.field], positions, axis=1, mode="clip")
  ids = [hash_ids(raw_feature(f, values, cfg), f.salt, cfg.embedding.vocab[f.table])
         for f in plan]
  return tables.pop(), jnp.stack(ids, axis=-1)


class Tables(nnx.Module):
  """The embedding tables of a config, as ``Embedding`` variables with logical axes, stored
  in ``embedding.table_dtype`` (gathered rows come in that dtype; the model casts them)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.sizes = table_sizes(cfg)
    init = layers.stddev_init(cfg.embedding.init_stddev)
    # float32, or bfloat16 (the float32 initial values rounded): ``embedding.table_dtype``
    dtype = jnp.dtype(cfg.embedding.get("table_dtype", "float32"))
    for name, (rows, dim) in self.sizes.items():
      vocab_axis = "vocab" if rows >= cfg.embedding.large_table_rows else "vocab_small"
      value = init(rngs.params(), (rows, dim), dtype)
      setattr(self, name, Embedding(value, out_sharding=(vocab_axis, "embed")))

  def gather(self, ids: dict) -> dict:
    """table -> rows: every id array of ``ids[table]`` (an array or a tuple of them) gathered,
    ids.shape + (dim,), in the same structure."""
    unknown = [t for t in ids if t not in self.sizes]
    if unknown:
      raise KeyError(f"unknown embedding table(s) {unknown}; known: {list(self.sizes)}")
    # ids are hashed into [0, rows): "clip" skips the out-of-range fill (a select per row)
    return {t: jax.tree.map(
        lambda i, t=t: jnp.take(getattr(self, t)[...], i, axis=0, mode="clip"), v)
            for t, v in ids.items()}
