"""The Moment&Cross ranking model: hashed embeddings -> domain encoders -> GSU/ESU cross
attention over both histories -> crowd ("moment") encoder -> CGC/PLE towers -> task logits.

The trainer's interface::

  ids = model.lookup_ids(batch)          # table -> (int32 rows per feature) (jnp hashing)
  rows = model.gather(ids)               # table -> (table[ids] per feature)
  out = model.apply_rows(batch, rows)    # dense params, and the ``inline_tables``
  out = model(batch)                     # the same, in one call

``apply_rows`` reads only the small side tables named by ``inline_tables`` ("live_side",
"sv_side"), for the ``inline`` features (``embedding.inline_ids``): the history behaviour rows
(action, watch/progress, time gap) are gathered only at the positions the GSU keeps and the
recent-N, which are known only inside the forward pass, and the category/tag rows are
gathered from their projection by the item encoders. A train step therefore differentiates
the inline tables whole (side tables of a few thousand rows), every other table through its
gathered rows. Gathering behaviour at every position and taking the kept ones gives the same
outputs up to float rounding (tests/test_model_reference.py checks outputs and gradients
against that plain computation); only the work differs.

With ``gsu.approx`` on (the two-stage search, ``gsu.py``), ``lookup_ids`` and ``apply_rows``
first cut each long history to its pre-scored candidates (``cut_histories``, no gradient), so
the step looks up, differentiates and updates only those positions' rows; the match features
still count over the whole history.

``out``: "logits" [B, len(TASKS)], "sv_interest" / "lv_interest" [B, d_model] (the user's
short-video and live interests in the common contrastive space) and, with
``contrastive.author_level``, "author_sv" / "author_lv" [B, d_model] (the candidate's author
in each domain's embedding space, projected to the same space).

Ablations: with ``use_sv_history`` (``use_lv_history``) off, that branch's tables and layers
are not built, it does not enter the towers, and its interest output is a learned constant
vector (so a contrastive loss on it stays well-defined and simply has nothing to align).
``use_crowd`` off drops the crowd encoder; ``use_match_features`` adds the hard-search match
counts of the enabled histories (``matches.py``). No dropout and no RNG in the forward pass.

``compute_dtype`` ("float32" or "bfloat16"): the dtype of activations and matmuls. Parameters
stay float32 and tables are stored in ``embedding.table_dtype``; gathered rows (and the
inline side tables) are cast to the compute dtype after the gather, every layer casts its float32 parameters where it uses them (``layers.cast``), and
all outputs are float32 (the task heads' last matmul returns float32 logits; the interest and
author vectors are cast), so losses, optimizer state and metrics stay float32. Softmaxes
(ESU, gates), the GSU's top-k and the pre-scores of ``gsu.approx`` (which keep the precision
that option names) run in float32. "float32" adds no cast anywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mcjax.model import config as model_config
from mcjax.model import crowd, embedding, encoders, esu, gsu, layers, matches, towers
from mcjax.contract import schema

_USER = ("user", "user_age", "user_gender", "user_activity", "hour_of_day")
_HARD_MATCH = {"hard_author": ("author", "author_id"),
               "hard_category": ("category", "live_category")}


class DomainBranch(nnx.Module):
  """The layers of one history domain ("lv" or "sv") on top of its encoder: the query
  projection of the candidate, the GSU-kept items' target attention (ESU) and the interest
  projection into the contrastive space. ``width`` is what it adds to the towers' input (the
  attended interest before projection)."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.query = layers.linear(d_model, d_model, rngs=rngs, dtype=dtype)
    self.esu = esu.TargetAttention(d_model, num_heads, rngs=rngs, dtype=dtype)
    self.interest = layers.linear(d_model, d_model, rngs=rngs, dtype=dtype)
    self.width = self.esu.width


class MomentCross(nnx.Module):
  """See the module docstring; build with ``build_model``.

  Layers (parameter paths): ``tables``, ``lv_encoder`` (also the candidate's), ``sv_encoder``,
  ``lv`` / ``sv`` (a ``DomainBranch`` each, or with that history off a learned constant
  ``lv_null`` / ``sv_null`` for its interest output), ``lv_recent_esu``, ``crowd``,
  ``matches``, ``author_{sv,lv}_proj`` and ``towers``, whose input width is the sum of the
  widths the parts before it report.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    model_config.validate(cfg)
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    d, dim = cfg.d_model, cfg.embedding.dim
    heads = cfg.esu.num_heads
    # None for float32 (no casts), else the dtype of activations and matmuls
    self.dtype = dtype = layers.compute_dtype(cfg.get("compute_dtype", "float32"))
    self.rows_dtype = dtype or jnp.dtype(jnp.float32)  # gathered rows and inline tables
    self.tables = embedding.Tables(cfg, rngs=rngs)
    # the live encoder also encodes the candidate
    self.lv_encoder = encoders.DomainEncoder("lv", dim, d, rngs=rngs, dtype=dtype)
    widths = [len(_USER) * dim, self.lv_encoder.width, dim]  # user, candidate, fans bucket
    # (creation order = the order of the parameter initialisers' random draws)
    self.lv = DomainBranch(d, heads, rngs=rngs, dtype=dtype) if cfg.use_lv_history else None
    self.lv_null = None if cfg.use_lv_history else nnx.Param(jnp.zeros((d,)))
    self.sv_encoder = (encoders.DomainEncoder("sv", dim, d, rngs=rngs, dtype=dtype)
                       if cfg.use_sv_history else None)
    self.sv = DomainBranch(d, heads, rngs=rngs, dtype=dtype) if cfg.use_sv_history else None
    self.sv_null = None if cfg.use_sv_history else nnx.Param(jnp.zeros((d,)))
    widths += [b.width for b in self.branches.values()]
    self.use_recent = cfg.use_lv_history and cfg.esu.recent_n > 0
    self.lv_recent_esu = (esu.TargetAttention(d, heads, rngs=rngs, dtype=dtype)
                          if self.use_recent else None)
    self.crowd = (crowd.CrowdEncoder(cfg.crowd.hidden, d, rngs=rngs, dtype=dtype,
                                     drop=model_config.crowd_drop(cfg))
                  if cfg.use_crowd else None)
    self.match_domains = tuple(self.branches)
    self.matches = (layers.linear(matches.num_features(self.match_domains, cfg.match_set), d,
                                  rngs=rngs, dtype=dtype)
                    if cfg.use_match_features and self.match_domains else None)
    widths += [m.width for m in (self.lv_recent_esu, self.crowd) if m is not None]
    widths += [self.matches.out_features] if self.matches is not None else []
    if cfg.contrastive.author_level:
      self.author_sv_proj = layers.linear(dim, d, rngs=rngs, dtype=dtype)
      self.author_lv_proj = layers.linear(dim, d, rngs=rngs, dtype=dtype)
    self.towers = towers.Towers(len(schema.TASKS), sum(widths), cfg.towers, rngs=rngs,
                                dtype=dtype)
    # wide path: the scaled crowd features straight to every task's logit, starting at 0
    # (created last: the other layers' initial values do not depend on it)
    self.crowd_wide = (layers.linear(len(self.crowd.keep), len(schema.TASKS), rngs=rngs,
                                     use_bias=False, dtype=dtype)
                       if cfg.use_crowd and cfg.crowd.get("wide", False) else None)
    if self.crowd_wide is not None:
      self.crowd_wide.kernel.value = jnp.zeros_like(self.crowd_wide.kernel.value)

  @property
  def branches(self) -> dict[str, DomainBranch]:
    """domain -> its branch, for the histories that are on ("lv" before "sv")."""
    return {dom: b for dom, b in (("lv", self.lv), ("sv", self.sv)) if b is not None}

  def encoder(self, dom: str) -> encoders.DomainEncoder:
    return self.lv_encoder if dom == "lv" else self.sv_encoder

  @property
  def table_sizes(self) -> dict[str, tuple[int, int]]:
    """table name -> (rows, dim)."""
    return dict(self.tables.sizes)

  @property
  def table_names(self) -> tuple[str, ...]:
    return tuple(self.tables.sizes)

  @property
  def inline_tables(self) -> tuple[str, ...]:
    """Tables ``apply_rows`` reads itself (those of the ``inline`` features)."""
    return embedding.inline_tables(self.cfg)

  def _inline(self, batch: dict, names, positions=None):
    """(table value, row ids) of inline features (see ``embedding.inline_ids``)."""
    table, ids = embedding.inline_ids(self.cfg, batch, names, positions)
    return getattr(self.tables, table)[...].astype(self.rows_dtype), ids

  def lookup_ids(self, batch: dict) -> dict:
    """table -> tuple of int32 row indices, one array per looked-up feature of the table
    (shaped like its batch field, or its cut history with ``gsu.approx``; hashing only)."""
    return embedding.lookup_ids(self.cfg, self.cut_histories(batch))

  def cut_histories(self, batch: dict) -> dict:
    """With ``gsu.approx`` on: the batch with each long history cut to its recent-N plus
    ``gsu.candidates`` pre-scored positions (``gsu.preselect``); otherwise the batch itself.

    ``lookup_ids`` and ``apply_rows`` both call it on the same batch and tables, without
    gradient: the same positions (one computation after XLA's common-subexpression pass).
    """
    cfg = self.cfg
    if cfg.gsu.approx == "off":
      return batch
    for dom, on in (("lv", cfg.use_lv_history), ("sv", cfg.use_sv_history)):
      max_len = np.shape(batch[f"{dom}_item"])[1] if on else 0
      recent = min(cfg.esu.recent_n, max_len) if dom == "lv" and self.use_recent else 0
      if max_len <= recent + cfg.gsu.candidates:
        continue  # short history: nothing to cut
      scores = jax.lax.stop_gradient(self._prescores(dom, batch))
      positions, length = gsu.preselect(scores, batch[f"{dom}_len"], recent,
                                        cfg.gsu.candidates)
      batch = gsu.take_history(batch, schema.DOMAINS[dom], f"{dom}_len", positions, length)
    return batch

  def _prescores(self, dom: str, batch: dict):
    """[B, L] pre-scores of a history for ``cut_histories`` (see ``gsu``'s two-stage
    search): the hard modes' match score, or the soft score's item, author (read on the
    shards owning their rows: ``gsu.owner_scores``) and side-feature parts."""
    cfg = self.cfg
    if cfg.gsu.mode in _HARD_MATCH:
      hist_field, cand_field = _HARD_MATCH[cfg.gsu.mode]
      return gsu.hard_scores(jnp.asarray(batch[f"{dom}_{hist_field}"])
                             == jnp.asarray(batch[cand_field])[:, None])
    sg = jax.lax.stop_gradient
    plan = {f.name: f for f in embedding.feature_plan(cfg)}

    def rows_of(name):  # (table value, int32 row ids) of a looked-up feature
      f = plan[name]
      table = sg(getattr(self.tables, f.table)[...])
      return table, embedding.hash_ids(jnp.asarray(batch[f.field]), f.salt,
                                       cfg.embedding.vocab[f.table])

    cand_rows = {}
    for key, name in (("cand_item", "live"), ("cand_author", "author")):
      table, ids = rows_of(name)
      cand_rows[key] = jnp.take(table, ids, axis=0, mode="clip").astype(self.rows_dtype)
    cand = self.lv_encoder.content(cand_rows, *self._inline(batch, ["live_category"]),
                                   prefix="cand")
    # float32 whatever the compute dtype: the pre-score's precision is gsu.approx's
    query = sg(self.branches[dom].query(cand)).astype(jnp.float32)
    enc = self.encoder(dom)
    kernel, dim = sg(enc.content_proj.kernel[...]), cfg.embedding.dim
    names = encoders.DOMAIN_CONTENT[dom][:-len(encoders.SIDE_CONTENT[dom])]
    triples = []
    for i, suffix in enumerate(names):  # q . (row @ K_i) = row . (K_i q)
      table, ids = rows_of(f"{dom}_{suffix}")
      triples.append((table, ids, query @ kernel[i * dim:(i + 1) * dim].T))
    scores = gsu.owner_scores(cfg.gsu.approx, triples)
    if cfg.gsu.approx == "simhash":
      return scores
    side_table, side_ids = embedding.inline_ids(
        cfg, batch, [f"{dom}_{s}" for s in encoders.SIDE_CONTENT[dom]])
    side_table = sg(getattr(self.tables, side_table)[...]).astype(jnp.float32)
    side = gsu.side_scores(side_table, side_ids, kernel[len(names) * dim:], query)
    return scores.astype(jnp.float32) + side

  def gather(self, ids: dict) -> dict:
    """table -> table[ids] rows (ids.shape + (dim,)), in the structure of ids."""
    return self.tables.gather(ids)

  def __call__(self, batch: dict, train: bool = False) -> dict:
    return self.apply_rows(batch, self.gather(self.lookup_ids(batch)), train=train)

  def _domain(self, dom: str, batch: dict, rows: dict, cand, cand_raw: dict):
    """One history branch: (interest before projection [B, D], recent vector or None)."""
    cfg = self.cfg
    enc, branch = self.encoder(dom), self.branches[dom]
    length = jnp.asarray(batch[f"{dom}_len"])
    query = branch.query(cand)
    content = enc.content(rows, *self._inline(
        batch, [f"{dom}_{s}" for s in encoders.SIDE_CONTENT[dom]]))
    match = None
    if cfg.gsu.mode in _HARD_MATCH:
      hist_field, cand_field = _HARD_MATCH[cfg.gsu.mode]
      match = jnp.asarray(batch[f"{dom}_{hist_field}"]) == cand_raw[cand_field][:, None]
    idx, valid, bias = gsu.search(cfg.gsu.mode, cfg.gsu.top_k, length, query=query,
                                  keys=content, match=match)
    # the kept positions, then the recent-N (live only): one behaviour gather, one item MLP
    n = min(cfg.esu.recent_n, content.shape[1]) if dom == "lv" and self.use_recent else 0
    positions = idx
    if n:
      recent_pos = jnp.broadcast_to(jnp.arange(n, dtype=idx.dtype), (idx.shape[0], n))
      positions = jnp.concatenate([idx, recent_pos], axis=1)
    items = enc.item(gsu.take(content, positions), *self._inline(
        batch, [f"{dom}_{s}" for s in encoders.DOMAIN_BEHAVIOUR[dom]], positions))
    if not n:
      return branch.esu(query, items, valid, bias), None
    kept, recent = jnp.split(items, [idx.shape[1]], axis=1)
    interest = branch.esu(query, kept, valid, bias)
    return interest, self.lv_recent_esu(query, recent, gsu.valid_positions(length, n))

  def apply_rows(self, batch: dict, rows: dict, train: bool = False) -> dict:
    """Forward pass from gathered rows (see ``gather``); ``train`` is accepted for the
    trainer's interface and changes nothing (no dropout)."""
    del train
    cfg = self.cfg
    full_batch, batch = batch, self.cut_histories(batch)
    r = {k: v.astype(self.rows_dtype)  # no op for float32 rows and compute dtype
         for k, v in embedding.split_rows(cfg, batch, rows).items()}
    batch_size = np.shape(batch["user_id"])[0]
    cand = self.lv_encoder.content({"cand_item": r["live"], "cand_author": r["author"]},
                                   *self._inline(batch, ["live_category"]), prefix="cand")
    parts = [r[k] for k in _USER] + [cand, r["author_fans"]]
    cand_raw = {k: jnp.asarray(batch[k]) for k in ("author_id", "live_category")}
    out = {}
    for dom, null in (("lv", self.lv_null), ("sv", self.sv_null)):
      if null is not None:
        out[f"{dom}_interest"] = jnp.broadcast_to(null[...], (batch_size, cfg.d_model))
        continue
      if np.shape(batch[f"{dom}_item"])[1] == 0:
        raise ValueError(f"batch[{dom + '_item'!r}] has history length 0; pad to >= 1 or "
                         f"turn off model.use_{dom}_history")
      interest, recent = self._domain(dom, batch, r, cand, cand_raw)
      parts.append(interest)
      if recent is not None:
        parts.append(recent)
      out[f"{dom}_interest"] = self.branches[dom].interest(interest)
    if cfg.use_crowd:
      crowd_in = self.crowd.scaled(jnp.asarray(batch["crowd"]))  # also the wide path's input
      parts.append(self.crowd.mlp(crowd_in))
    if cfg.use_match_features and self.match_domains:
      parts.append(jax.nn.relu(self.matches(matches.match_features(
          full_batch, self.match_domains, cfg.match_set))))
    out["logits"] = self.towers(jnp.concatenate(parts, axis=-1))
    if self.crowd_wide is not None:
      out["logits"] = out["logits"] + self.crowd_wide(crowd_in).astype(out["logits"].dtype)
    if cfg.contrastive.author_level:
      out["author_sv"] = self.author_sv_proj(r["author_in_sv"])
      out["author_lv"] = self.author_lv_proj(r["author"])
    return {k: v.astype(jnp.float32) for k, v in out.items()}  # no op for float32


def selected_positions(cfg: ml_collections.ConfigDict, domain: str, hist_len: int) -> int:
  """History positions per example at which ``apply_rows`` gathers the domain's behaviour
  rows: the GSU's min(top_k, hist_len) kept items, plus the recent-N for the live history."""
  n = min(cfg.gsu.top_k, hist_len)
  if domain == "lv" and cfg.esu.recent_n > 0:
    n += min(cfg.esu.recent_n, hist_len)
  return n


def _mesh_active() -> bool:
  return not jax.sharding.get_abstract_mesh().empty


def build_model(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs,
                eager_sharding: bool | None = None) -> MomentCross:
  """Builds the model; variables carry logical axis metadata either way.

  eager_sharding: place variables on the mesh at creation (needs ``jax.set_mesh`` and
    ``nnx.logical_axis_rules`` mapping every name in ``config.LOGICAL_AXES``). Default: on iff
    a mesh and logical rules are both active and no enclosing ``nnx.use_eager_sharding(False)``
    turned it off; otherwise off (metadata only, no mesh needed).
    With eager sharding the model is built under jit, so big tables are born sharded;
    without, it is built eagerly (per-shape compiles are cached across builds).
  """
  from flax.core import spmd
  model_config.validate(cfg)
  if eager_sharding is None:
    eager_sharding = (nnx.using_eager_sharding() and _mesh_active()
                      and bool(spmd.get_logical_axis_rules()))
  with nnx.use_eager_sharding(eager_sharding):
    if eager_sharding:
      return nnx.jit(lambda rngs: MomentCross(cfg, rngs=rngs))(rngs)
    return MomentCross(cfg, rngs=rngs)
