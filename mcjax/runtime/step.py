"""The jitted train and eval steps over a ``TrainState``, sharing one forward + loss.

``train_step(state, batch) -> (state, metrics)``: the model looks up its ids and gathers rows;
the loss is differentiated w.r.t. the dense params and the *gathered rows*; AdamW updates the
dense params and ``sparse.sparse_update`` the touched table rows (``sparse=False`` instead
differentiates w.r.t. whole tables and uses ``sparse.dense_update``: the O(vocabulary)
reference, for tests and benchmarks). Tables the model reads inside ``apply_rows`` (its
optional ``inline_tables``: rows gathered at positions known only in the forward pass) are
differentiated whole and dense-updated in both modes. ``eval_step(state, batch) -> (probs
[B, T], metrics)``. Tables stored in bfloat16 (``model.embedding.table_dtype``) are
differentiated through float32 copies of their rows (or of the whole small table), so row
gradients are summed in float32; the row optimizers work in float32 and round each updated
row once (``sparse``).

Both are ``jax.jit`` once with explicit shardings (batch on "data"); the train step donates
the state. The model implements ``TrainableModel`` (below).
``loss_fn(out, batch) -> (total, terms)``, e.g.
``functools.partial(mcjax.losses.compute_loss, cfg=loss_config())``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import Mesh

from mcjax.runtime import exchange
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import sparse
from mcjax.runtime.state import ModelDef, OptimConfig, TrainState

LossFn = Callable[[dict, dict], tuple[jax.Array, dict]]


class TrainableModel(Protocol):
  """What the steps need of a model (``mcjax.model.MomentCross``, ``tests/toy_model.py``).

  ``inline_tables`` is optional: a model without the attribute reads no table itself.
  """

  inline_tables: tuple[str, ...]
  """Tables ``apply_rows`` reads itself (rows at positions known only in the forward pass):
  differentiated whole and dense-updated."""

  def lookup_ids(self, batch: dict) -> dict:
    """table -> int32 row ids (an array, or a tuple of arrays, one per looked-up feature);
    hashing only, no table reads."""

  def gather(self, ids: dict) -> dict:
    """table -> rows: a pure lookup, ids.shape + (dim,) per array, in the structure of ids."""

  def apply_rows(self, batch: dict, rows: dict, train: bool = False) -> dict:
    """The forward pass from gathered rows: an output dict with "logits" [B, T]."""


def logits_to_probs(out) -> jax.Array:
  """Default ``predict_fn``: sigmoid of ``out["logits"]`` ([B, T])."""
  return jax.nn.sigmoid(out["logits"].astype(jnp.float32))


def _float32(tree):
  """Floating arrays of a tree in float32 (no op for float32 ones): the differentiated view
  of bfloat16 tables and rows, so their gradients are float32."""
  return jax.tree.map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _group_by_table(model_def: ModelDef, ids: dict, row_grads: dict) -> dict:
  """{table path: (flat ids [n], flat row grads [n, dim])}, merging keys of the same table
  and the arrays of a key (``ids[key]`` may be an array or a tuple of arrays)."""
  groups = {}
  for key in ids:
    path = model_def.table_path(key)
    pieces = groups.setdefault(path, ([], []))
    for i, g in zip(jax.tree.leaves(ids[key]), jax.tree.leaves(row_grads[key])):
      pieces[0].append(i.reshape(-1))
      pieces[1].append(g.reshape(i.size, -1))
  cat = lambda xs: jnp.concatenate(xs) if len(xs) > 1 else xs[0]  # noqa: E731
  return {path: (cat(i), cat(g)) for path, (i, g) in groups.items()}


def _flat_row_state(state: TrainState) -> dict:
  return traverse_util.flatten_dict(state.row_state) if state.row_state else {}


def _row_state(flat: dict, path: tuple) -> dict:
  """The row optimizer state of the table at ``path`` (a dict of arrays) from the flattened
  ``state.row_state``."""
  return {k[-1]: v for k, v in flat.items() if k[:-1] == path}


def _update_tables(state: TrainState, updates: dict):
  """Applies ``update(table, row_state) -> (table, row_state)`` per table path."""
  tables = traverse_util.flatten_dict(state.tables) if state.tables else {}
  rows = _flat_row_state(state)
  for path, update in updates.items():
    tables[path], table_rows = update(tables[path], _row_state(rows, path))
    rows.update({path + (k,): v for k, v in table_rows.items()})
  unflat = lambda d: traverse_util.unflatten_dict(d) if d else {}  # noqa: E731
  return unflat(tables), unflat(rows)


def apply(model_def: ModelDef, params: dict, tables: dict, rest: dict, batch: dict, *,
          rows: dict | None = None, ids: dict | None = None, train: bool):
  """The one model pass of the train, sparse train and eval steps and of the scorer.

  The model merged from ``(tables, params, rest)`` reads the given ``rows`` (gradients then
  flow to the rows, not the tables) and gathers the rows of ``ids`` from ``tables`` (default:
  every id of ``model.lookup_ids(batch)``). Returns ``(out, rest)``, ``rest`` being the
  model's non-parameter variables after the pass.
  """
  model: TrainableModel = model_def.merge(tables, params, rest)
  ids = model.lookup_ids(batch) if ids is None else ids
  rows = {**(rows or {}), **(model.gather(ids) if ids else {})}
  out = model.apply_rows(batch, rows, train=train)
  return out, model_def.split(model)[2]


def forward(model_def: ModelDef, loss_fn: LossFn, params: dict, tables: dict, rest: dict,
            batch: dict, *, rows: dict | None = None, ids: dict | None = None, train: bool):
  """``apply`` then the loss: ``(total, (terms, out, rest))``."""
  out, rest = apply(model_def, params, tables, rest, batch, rows=rows, ids=ids, train=train)
  total, terms = loss_fn(out, batch)
  return total, (terms, out, rest)


def _metrics(total: jax.Array, terms: dict, prefix: str) -> dict:
  """``<prefix>/loss`` plus the loss terms: in training a term ``t`` becomes ``loss/t``
  (names already under ``loss/`` are kept); in eval every name gets ``<prefix>/``."""
  metrics = {f"{prefix}/loss": total.astype(jnp.float32)}
  for name, value in terms.items():
    if prefix == "learning":
      name = name if name.startswith("loss/") else f"loss/{name}"
    else:
      name = f"{prefix}/{name}"
    metrics[name] = jnp.asarray(value, jnp.float32)
  return metrics


def _exchanged(shardings: TrainState, mesh: Mesh, capacity: float | None) -> set:
  """Paths of the tables the embedding exchange serves: with a ``capacity``, those sharded
  over every device (``exchange.served``); each must split evenly over the devices."""
  if capacity is None or not shardings.tables:
    return set()
  specs = traverse_util.flatten_dict(shardings.tables)
  return {path for path, s in specs.items() if exchange.served(s.spec)}


def _routed(model_def: ModelDef, ids: dict, paths: set) -> dict:
  """{table path: [(lookup key, its id arrays)]} for the ids of the tables in ``paths``."""
  routed = {p: [] for p in sorted(paths)}
  for key, v in ids.items():
    if model_def.table_path(key) in routed:
      routed[model_def.table_path(key)].append((key, jax.tree.leaves(v)))
  return {p: keyed for p, keyed in routed.items() if keyed}


def _exchange_rows(flat_tables: dict, ids: dict, routed: dict, mesh: Mesh,
                   capacity: float | None):
  """The rows of the ``routed`` lookups through the exchange, in the structure of ``ids``
  (one exchange per table), and the number of ids past the exchange's capacity."""
  rows, overflow = {}, jnp.zeros((), jnp.int32)
  for path, keyed in routed.items():
    exchange.check_table("/".join(map(str, path)), flat_tables[path].shape[0], mesh)
    got, dropped = exchange.lookup(flat_tables[path], [i for _, ids_ in keyed for i in ids_],
                                   mesh, capacity)
    got, overflow = iter(got), overflow + dropped
    for key, _ in keyed:
      rows[key] = jax.tree.unflatten(jax.tree.structure(ids[key]),
                                     [next(got) for _ in jax.tree.leaves(ids[key])])
  return rows, overflow


def make_train_step(model_def: ModelDef, optim: OptimConfig, loss_fn: LossFn,
                    shardings: TrainState, mesh: Mesh, *, sparse_update: bool = True,
                    dense_below_rows: int = 0, exchange_capacity: float | None = None):
  """The jitted ``train_step(state, batch) -> (state, metrics)`` (state donated).

  With ``sparse_update``, tables of fewer than ``dense_below_rows`` rows (side features:
  categories, buckets, actions, whose ids repeat thousands of times per batch) and the
  model's ``inline_tables`` are differentiated whole and updated with ``sparse.dense_update``
  (same rows touched, same result), which is cheaper than sorting their ids; larger tables
  get sparse row updates. With ``exchange_capacity`` (``mesh.embedding_exchange =
  "all_to_all"``), the sparse tables sharded over every device are looked up and updated
  through ``mcjax.runtime.exchange`` (all-to-alls to the rows' owners) instead of GSPMD's
  gathers and scatters.

  Metrics: ``learning/loss``, ``learning/grad_norm`` (dense, before clipping),
  ``learning/row_grad_norm`` (of the per-row summed table gradients), ``learning/param_norm``
  (dense parameters after the update: cheap, and non-finite once any of them is),
  ``learning/lr``, ``loss/<term>`` for each loss term, and with the exchange
  ``learning/exchange_overflow`` (ids past its capacity: not served, not updated).
  """
  tx = optim.dense_tx()
  schedule = optim.schedule()
  exchanged = _exchanged(shardings, mesh, exchange_capacity) if sparse_update else set()

  def train_step(state: TrainState, batch: dict):
    flat_tables = traverse_util.flatten_dict(state.tables) if state.tables else {}
    if sparse_update:
      model: TrainableModel = model_def.merge(state.tables, state.params, state.rest)
      ids = model.lookup_ids(batch)
      inline = {model_def.table_path(t) for t in getattr(model, "inline_tables", ())}
      small = {path for path, t in flat_tables.items()
               if t.shape[0] < dense_below_rows or path in inline}
      large_ids = {k: v for k, v in ids.items() if model_def.table_path(k) not in small}
      small_ids = {k: v for k, v in ids.items() if model_def.table_path(k) in small}
      routed = _routed(model_def, large_ids, exchanged - small)
      local_ids = {k: v for k, v in large_ids.items() if model_def.table_path(k) not in routed}
      rows, overflow = _exchange_rows(flat_tables, large_ids, routed, mesh, exchange_capacity)
      rows = _float32({**rows, **model.gather(local_ids)})  # float32 row gradients

      def loss_of(params, small_tables, rows):
        tables = traverse_util.unflatten_dict({**flat_tables, **small_tables})
        return forward(model_def, loss_fn, params, tables, state.rest, batch, rows=rows,
                       ids=small_ids, train=True)

      grad_fn = jax.value_and_grad(loss_of, argnums=(0, 1, 2), has_aux=True)
      (total, (terms, _, rest)), (g_params, g_small, g_rows) = grad_fn(
          state.params, {p: _float32(flat_tables[p]) for p in small}, rows)
      vocab = {p: t.shape[0] for p, t in flat_tables.items()}
      uniq = {path: sparse.unique_rows(i, g, vocab[path])
              for path, (i, g) in _group_by_table(model_def, local_ids, g_rows).items()}
      # per-row mean squares first, the expression row-wise Adagrad computes: one shared
      # reduction, not a squared [n, dim] buffer materialised for two of them
      row_grad_sq = sum((jnp.sum(jnp.mean(jnp.square(g), axis=-1)) * g.shape[-1]
                         for _, g in uniq.values()), jnp.zeros((), jnp.float32))
      row_grad_sq += sum((jnp.sum(jnp.square(g)) for g in g_small.values()),
                         jnp.zeros((), jnp.float32))
      updates = {
          path: (lambda t, s, r=r, g=g: sparse.update_rows(t, s, r, g, state.step, optim.rows))
          for path, (r, g) in uniq.items()}
      flat_rows = _flat_row_state(state)
      for path, keyed in routed.items():
        table, row_state_, sq = exchange.update(
            flat_tables[path], _row_state(flat_rows, path),
            [i for _, ids_ in keyed for i in ids_],
            [g for key, _ in keyed for g in jax.tree.leaves(g_rows[key])],
            state.step, optim.rows, mesh, exchange_capacity)
        updates[path] = lambda t, s, r=(table, row_state_): r
        row_grad_sq = row_grad_sq + sq
      updates.update({
          path: (lambda t, s, g=g: sparse.dense_update(t, s, g, state.step, optim.rows))
          for path, g in g_small.items()})
    else:
      grad_fn = jax.value_and_grad(
          lambda p, t: forward(model_def, loss_fn, p, t, state.rest, batch, train=True),
          argnums=(0, 1), has_aux=True)
      (total, (terms, _, rest)), (g_params, g_tables) = grad_fn(state.params,
                                                                _float32(state.tables))
      flat_g = traverse_util.flatten_dict(g_tables) if g_tables else {}
      row_grad_sq = sum((jnp.sum(jnp.square(g)) for g in flat_g.values()),
                        jnp.zeros((), jnp.float32))
      updates = {
          path: (lambda t, s, g=g: sparse.dense_update(t, s, g, state.step, optim.rows))
          for path, g in flat_g.items()}
    tables, row_state = _update_tables(state, updates)
    param_updates, opt_state = tx.update(g_params, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    new_state = TrainState(step=state.step + 1, params=params, tables=tables, rest=rest,
                           opt_state=opt_state, row_state=row_state)
    metrics = _metrics(total, terms, "learning")
    metrics["learning/grad_norm"] = optax.tree.norm(g_params)
    metrics["learning/row_grad_norm"] = jnp.sqrt(row_grad_sq)
    metrics["learning/param_norm"] = optax.tree.norm(params)
    metrics["learning/lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    if sparse_update and exchanged:
      metrics["learning/exchange_overflow"] = overflow.astype(jnp.float32)
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)),
                 donate_argnums=(0,))


def eval_forward(model_def: ModelDef, tables: dict, params: dict, rest: dict,
                 batch: dict) -> dict:
  """The model's outputs on a batch in evaluation mode (``apply``, train=False): what
  ``eval_step`` and the scorer (``mcjax.serve``) compute, so served scores are evaluation
  predictions."""
  return apply(model_def, params, tables, rest, batch, train=False)[0]


def make_eval_step(model_def: ModelDef, loss_fn: LossFn, shardings: TrainState, mesh: Mesh,
                   *, predict_fn: Callable = logits_to_probs,
                   exchange_capacity: float | None = None):
  """The jitted ``eval_step(state, batch) -> (probs [B, T], metrics)``; metrics are
  ``eval/loss`` and ``eval/<term>`` (e.g. ``eval/loss/bce`` for a term named ``loss/bce``).
  With ``exchange_capacity`` the tables sharded over every device are read through the
  exchange, as in training, and ``eval/exchange_overflow`` counts the ids past its capacity
  (their rows read as zeros)."""
  exchanged = _exchanged(shardings, mesh, exchange_capacity)

  def eval_step(state: TrainState, batch: dict):
    rows = ids = None
    if exchanged:
      model: TrainableModel = model_def.merge(state.tables, state.params, state.rest)
      ids = model.lookup_ids(batch)
      routed = _routed(model_def, ids, exchanged)
      rows, overflow = _exchange_rows(traverse_util.flatten_dict(state.tables), ids, routed,
                                      mesh, exchange_capacity)
      ids = {k: v for k, v in ids.items() if k not in rows}
    total, (terms, out, _) = forward(model_def, loss_fn, state.params, state.tables,
                                     state.rest, batch, rows=rows, ids=ids, train=False)
    metrics = _metrics(total, terms, "eval")
    if exchanged:
      metrics["eval/exchange_overflow"] = overflow.astype(jnp.float32)
    return predict_fn(out), metrics

  return jax.jit(eval_step,
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)))
