"""Row-wise embedding optimizers and the sparse (touched rows only) table update.

A step differentiates the loss with respect to the *gathered rows*, not the tables. For each
table, ``sparse_update`` reduces the row gradients to the unique rows of the batch (a static
``size`` = number of ids: sort the ids, find each id's run by binary search, then
``segment_sum``), applies the row optimizer to those rows only and scatters them back, so a
step costs O(batch), not O(vocabulary). ``dense_update`` is the reference: the same optimizer applied to a full-table
gradient, touching only rows whose gradient is nonzero.

Optimizers (``RowOptConfig.kind``):
  * ``"adagrad"``: row-wise Adagrad, one accumulator per row holding the running sum of the
    row's mean squared gradient (FBGEMM / TorchRec ``ROWWISE_ADAGRAD``).
  * ``"adam"``: lazy Adam, per-element moments updated only for touched rows, bias correction
    from the global step (TF ``LazyAdam``).

Tables may be stored in bfloat16: gradients and optimizer state are float32, and each updated
row is computed in float32 (row + delta) and rounded to the table's dtype once (round to
nearest: an update below half a bfloat16 step of the row is lost; no stochastic rounding).
Float32 tables take the plain float32 update.

Under an Auto (GSPMD) mesh the gathers and scatters are partitioned by XLA; tables may be
row-sharded on any mesh axis and the row state follows the table's row sharding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

KINDS = ("adagrad", "adam")


@dataclasses.dataclass(frozen=True)
class RowOptConfig:
  """Row optimizer hyper-parameters."""
  kind: str = "adagrad"
  learning_rate: float = 0.05
  eps: float = 1e-8
  initial_accumulator: float = 0.0  # adagrad only
  b1: float = 0.9  # adam only
  b2: float = 0.999  # adam only

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"RowOptConfig.kind must be one of {KINDS}, got {self.kind!r}")
    if self.learning_rate <= 0:
      raise ValueError(f"RowOptConfig.learning_rate must be > 0, got {self.learning_rate}")


def init_row_state(table: jax.Array, cfg: RowOptConfig) -> dict:
  """The optimizer state of one [vocab, dim] table (a dict of arrays)."""
  vocab = table.shape[0]
  if cfg.kind == "adagrad":
    return {"acc": jnp.full((vocab,), cfg.initial_accumulator, jnp.float32)}
  return {"m": jnp.zeros(table.shape, jnp.float32), "v": jnp.zeros(table.shape, jnp.float32)}


def row_state_specs(table_spec: P, cfg: RowOptConfig) -> dict:
  """PartitionSpecs of ``init_row_state`` given the table's spec: rows shard like the table."""
  table_spec = tuple(table_spec) + (None,) * (2 - len(tuple(table_spec)))
  if cfg.kind == "adagrad":
    return {"acc": P(table_spec[0])}
  return {"m": P(*table_spec), "v": P(*table_spec)}


def unique_ids(ids: jax.Array, vocab: int):
  """The distinct ids of ``ids`` and where each id went.

  Returns ``(rows, inverse)``: ``rows`` [n] int32 sorted and distinct, where n = ids.size;
  the real rows come first and the padding slots hold distinct out-of-range indices (>=
  vocab, so vocab + n must stay below 2**31: ``model.embedding.vocab`` is capped at 2**30),
  which scatters with ``mode="drop"`` ignore. ``inverse`` [n]: the slot of each
  (flattened) id in ``rows``. Ids >= vocab are kept like any other id.
  """
  flat = ids.reshape(-1).astype(jnp.int32)
  n = flat.shape[0]
  if n == 0:
    return flat, flat
  # A one-operand sort plus a binary search: on CPU a key-value sort (what jnp.unique's
  # return_inverse does) is several times slower than sorting the keys alone.
  ordered = jnp.sort(flat)
  starts = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
  run = jnp.cumsum(starts.astype(jnp.int32)) - 1  # distinct-id index of each sorted slot
  inverse = run[jnp.searchsorted(ordered, flat, method="scan_unrolled")]
  slot = jnp.arange(n, dtype=jnp.int32)
  rows = jnp.zeros((n,), jnp.int32).at[run].set(ordered, mode="drop")
  rows = jnp.where(slot <= run[-1], rows, vocab + slot)
  return rows, inverse


def unique_rows(ids: jax.Array, row_grads: jax.Array, vocab: int):
  """Sums the gradients of duplicate ids.

  Args:
    ids: int row ids of any shape, values in [0, vocab).
    row_grads: ``ids.shape + (dim,)`` gradients of the gathered rows.
    vocab: the table's number of rows.

  Returns:
    ``(rows, grads)``: ``rows`` as from ``unique_ids``; ``grads`` [n, dim] is each row's
    summed gradient (zero in padding slots).
  """
  n = ids.size
  grads = row_grads.reshape(n, row_grads.shape[-1])
  rows, inverse = unique_ids(ids, vocab)
  if n == 0:
    return rows, grads
  return rows, jax.ops.segment_sum(grads, inverse, num_segments=n)


def _apply_rows(rows_state: dict, grads: jax.Array, step: jax.Array, cfg: RowOptConfig):
  """Optimizer math on gathered row state: returns (delta for the rows, new row state)."""
  if cfg.kind == "adagrad":
    acc = rows_state["acc"] + jnp.mean(jnp.square(grads), axis=-1)
    delta = -cfg.learning_rate * grads / (jnp.sqrt(acc)[:, None] + cfg.eps)
    return delta, {"acc": acc}
  t = (step + 1).astype(jnp.float32)
  m = cfg.b1 * rows_state["m"] + (1 - cfg.b1) * grads
  v = cfg.b2 * rows_state["v"] + (1 - cfg.b2) * jnp.square(grads)
  m_hat = m / (1 - cfg.b1 ** t)
  v_hat = v / (1 - cfg.b2 ** t)
  delta = -cfg.learning_rate * m_hat / (jnp.sqrt(v_hat) + cfg.eps)
  return delta, {"m": m, "v": v}


def update_rows(table: jax.Array, row_state: dict, rows: jax.Array, grads: jax.Array,
                step: jax.Array, cfg: RowOptConfig):
  """Applies the row optimizer to distinct sorted ``rows`` (as from ``unique_rows``; indices
  >= vocab are ignored) with their summed ``grads``; returns ``(table, row_state)``."""
  gathered = {k: s.at[rows].get(mode="fill", fill_value=0) for k, s in row_state.items()}
  delta, new_rows = _apply_rows(gathered, grads.astype(jnp.float32), step, cfg)
  scatter = dict(mode="drop", indices_are_sorted=True, unique_indices=True)
  if table.dtype == delta.dtype:
    table = table.at[rows].add(delta, **scatter)
  else:  # a bfloat16 table: the new rows in float32, rounded once
    old = table.at[rows].get(mode="fill", fill_value=0).astype(delta.dtype)
    table = table.at[rows].set((old + delta).astype(table.dtype), **scatter)
  row_state = {k: row_state[k].at[rows].set(new_rows[k], **scatter) for k in row_state}
  return table, row_state


def sparse_update(table: jax.Array, row_state: dict, ids: jax.Array, row_grads: jax.Array,
                  step: jax.Array, cfg: RowOptConfig):
  """Updates only the rows in ``ids`` of one table.

  Args:
    table: [vocab, dim] embedding table.
    row_state: its ``init_row_state`` dict.
    ids: int row ids of any shape (duplicates allowed).
    row_grads: ``ids.shape + (dim,)`` loss gradient w.r.t. the gathered rows.
    step: scalar int, the global step before this update (adam bias correction).
    cfg: the row optimizer.

  Returns:
    ``(table, row_state)`` updated.
  """
  rows, grads = unique_rows(ids, row_grads.astype(jnp.float32), table.shape[0])
  return update_rows(table, row_state, rows, grads, step, cfg)


def dense_update(table: jax.Array, row_state: dict, grad: jax.Array, step: jax.Array,
                 cfg: RowOptConfig):
  """Reference update from a full-table gradient [vocab, dim]: the same row optimizer applied
  to every row whose gradient is nonzero (O(vocabulary) work)."""
  touched = jnp.any(grad != 0, axis=-1)
  delta, new_state = _apply_rows(row_state, grad.astype(jnp.float32), step, cfg)
  # float32 sum, rounded once for a bfloat16 table (for float32: table + where(...))
  table = (table.astype(delta.dtype) + jnp.where(touched[:, None], delta, 0)).astype(
      table.dtype)
  row_state = {
      k: jnp.where(touched.reshape((-1,) + (1,) * (v.ndim - 1)), new_state[k], v)
      for k, v in row_state.items()
  }
  return table, row_state
