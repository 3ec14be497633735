"""The embedding exchange: lookups and sparse updates of tables sharded over every device, as
all-to-alls under ``shard_map`` (``mesh.embedding_exchange = "all_to_all"``).

Under GSPMD (the default, ``"gspmd"``) a large table is row-sharded on "model" and replicated
on "data": the partitioner serves a lookup with a masked gather on every shard and an
all-reduce of the rows, and the sparse update sorts and sums the row gradients of the *global*
batch on every device, so the bytes per device grow with the number of chips
(benchmarks/RESULTS.md, "Communication at scale"). Here a table is row-sharded over all N
devices (mesh axes ("data", "model"), blocks of V / N rows in device order), as TorchRec and
jax-tpu-embedding shard tables, and each device:

lookup
  1. takes its share of its data shard's ids (the M devices of a model group hold the same
     batch rows; each takes one of M chunks) and deduplicates it (``sparse.unique_ids``);
  2. sends each distinct id to the device that owns its row, at most ``C`` ids to each owner
     (``capacity``: ``mesh.exchange_capacity`` x chunk / N plus a margin), in one all-to-all
     of [N, C] ids. Row ids are hashed, so owners are uniform: an owner gets chunk / N ids
     from a sender on average;
  3. the owner reads the rows from its block and sends them back (all-to-all of [N, C, D]);
  4. every id of the chunk gets its row, and the model group all-gathers its chunks over
     "model" (each device then holds the rows of its batch shard, as the model reads them).
update
  the same route with the row gradients, summed per distinct id of a chunk first; the owner
  sums what its senders sent per row and applies the row optimizer to its block
  (``sparse.unique_rows`` + ``sparse.update_rows``, the GSPMD path's functions).

Bytes per device and step: ids 4 N C and rows (or gradients) 4 N C D each way, N C being about
``capacity`` x the chunk, plus the model group's all-gather of the chunks' rows: for a fixed
per-chip batch, independent of the number of chips and of the table size. An id beyond its
owner's capacity gets a zero row and no update, and is counted: the train step reports
``learning/exchange_overflow`` and the trainer stops at the first step with a count above 0,
naming ``mesh.exchange_capacity``. Tables need a row count divisible by the device count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import sparse

AXES = mesh_lib.AXES


def row_axes(spec: P):
  """The mesh axes a table's rows are split over, as a tuple (empty: replicated)."""
  first = tuple(spec)[0] if len(tuple(spec)) else None
  if first is None:
    return ()
  return tuple(first) if isinstance(first, (tuple, list)) else (first,)


def served(spec: P) -> bool:
  """Whether a table with this PartitionSpec is sharded over every device (rows on "data" x
  "model"): the layout the exchange serves."""
  return row_axes(spec) == AXES


def capacity(chunk: int, shards: int, factor: float) -> int:
  """Ids one device may send to one owner per step: ``factor`` x the even share plus six
  standard deviations of a uniform split (small shares vary the most), at most the chunk
  (when nothing can overflow)."""
  share = chunk / shards
  return max(1, min(chunk, math.ceil(factor * share + 6.0 * math.sqrt(share))))


def overflow_error(step: int, dropped: int, factor: float, *, of: str = "",
                   effect: str = "their rows read as zeros") -> str:
  """The one line that stops a run when ``dropped`` ids (``of``: of which records) went past
  the exchange's capacity at ``step``."""
  return (f"step {step}: the embedding exchange dropped {dropped} ids{of} past its capacity "
          f"({effect}): raise --config.mesh.exchange_capacity (now {factor})")


def check_table(name: str, rows: int, mesh: Mesh) -> None:
  """Refuses a table whose rows do not split evenly over the devices (one line, the key)."""
  if rows % mesh.size:
    raise ValueError(
        f"mesh.embedding_exchange='all_to_all': table {name} has {rows} rows, not divisible "
        f"by the {mesh.size} devices of mesh {dict(mesh.shape)}; size the table "
        "(model.embedding.vocab) to a multiple of the device count")


class _Plan:
  """Static sizes of one table's exchange: a data shard's n ids in M chunks of k."""

  def __init__(self, mesh: Mesh, vocab: int, id_arrays: Sequence, factor: float):
    self.shards, self.model = mesh.size, mesh.shape["model"]
    self.vocab, self.per = vocab, vocab // mesh.size
    self.sizes = [int(a.size) // mesh.shape["data"] for a in id_arrays]
    self.n = sum(self.sizes)
    self.k = -(-self.n // self.model)
    self.cap = capacity(self.k, self.shards, factor)

  def chunk(self, flat: jax.Array, fill) -> jax.Array:
    """This device's chunk of a data shard's flat array (padded with ``fill``)."""
    pad = self.k * self.model - self.n
    if pad:
      flat = jnp.concatenate([flat, jnp.full((pad,) + flat.shape[1:], fill, flat.dtype)])
    start = jax.lax.axis_index("model") * self.k
    return jax.lax.dynamic_slice_in_dim(flat, start, self.k)

  def route(self, distinct: jax.Array):
    """Where each distinct (sorted) id goes in the [N x C] send buffer: ``(dest, fits,
    overflow)``; ids past an owner's capacity, and padding (>= vocab), get an index past the
    buffer, which scatters drop."""
    owner = jnp.minimum(distinct // self.per, self.shards)
    first = jnp.searchsorted(distinct, jnp.arange(self.shards, dtype=jnp.int32) * self.per)
    slot = jnp.arange(distinct.shape[0], dtype=jnp.int32)
    pos = slot - first[jnp.minimum(owner, self.shards - 1)].astype(jnp.int32)
    real = owner < self.shards
    fits = real & (pos < self.cap)
    dest = jnp.where(fits, owner * self.cap + pos, self.shards * self.cap)
    return dest, fits, jnp.sum(real & ~fits, dtype=jnp.int32)

  def send(self, dest: jax.Array, values: jax.Array, fill) -> jax.Array:
    """Values scattered into the send buffer and exchanged: what each owner received, [N, C,
    ...], row i from device i."""
    buf = jnp.full((self.shards * self.cap,) + values.shape[1:], fill, values.dtype)
    buf = buf.at[dest].set(values, mode="drop")
    return _all_to_all(buf.reshape((self.shards, self.cap) + values.shape[1:]))

  def local(self, received: jax.Array) -> jax.Array:
    """Received global ids -> rows of this device's block (``per``, out of range, for the
    empty slots)."""
    me = jax.lax.axis_index(AXES)
    return jnp.where(received >= 0, received - me * self.per, self.per)

  def split(self, flat: jax.Array, shapes: Sequence[tuple]) -> list:
    out, at = [], 0
    for size, shape in zip(self.sizes, shapes):
      out.append(flat[at:at + size].reshape(shape + flat.shape[1:]))
      at += size
    return out


def _all_to_all(x: jax.Array) -> jax.Array:
  """Row i of ``x`` [N, ...] goes to device i; row i of the result came from device i."""
  return jax.lax.all_to_all(x, AXES, 0, 0)


def _flat(arrays: Sequence[jax.Array], trailing: int = 0) -> jax.Array:
  parts = [a.reshape((-1,) + a.shape[a.ndim - trailing:]) for a in arrays]
  return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def lookup(table: jax.Array, ids: Sequence[jax.Array], mesh: Mesh, factor: float):
  """``table[i]`` for each id array ``i`` of ``ids`` (batch-sharded on "data"), through the
  exchange; returns ``(rows, overflow)``: the row arrays, ``i.shape + (dim,)``, batch-sharded
  like the ids (zeros for ids past the capacity), and the number of those ids."""
  vocab, dim = table.shape
  plan = _Plan(mesh, vocab, ids, factor)

  def body(block, *local_ids):
    chunk = plan.chunk(_flat(local_ids).astype(jnp.int32), vocab)
    distinct, inverse = sparse.unique_ids(chunk, vocab)
    dest, fits, overflow = plan.route(distinct)
    asked = plan.send(dest, distinct, -1)                       # [N, C] ids to serve
    local = plan.local(asked)
    rows = jnp.where((asked >= 0)[..., None],
                     block.at[local].get(mode="fill", fill_value=0), 0)
    back = _all_to_all(rows).reshape(plan.shards * plan.cap, dim)
    mine = jnp.where(fits[:, None], back.at[dest].get(mode="fill", fill_value=0), 0)
    group = jax.lax.all_gather(mine[inverse], "model", axis=0, tiled=True)[:plan.n]
    return (tuple(plan.split(group, [i.shape for i in local_ids])),
            jax.lax.psum(overflow, AXES))

  rows, overflow = jax.shard_map(
      body, mesh=mesh, in_specs=(P(AXES, None),) + (P("data"),) * len(ids),
      out_specs=((P("data"),) * len(ids), P()), check_vma=False)(table, *ids)
  return list(rows), overflow


def update(table: jax.Array, row_state: dict, ids: Sequence[jax.Array],
           grads: Sequence[jax.Array], step: jax.Array, cfg: sparse.RowOptConfig, mesh: Mesh,
           factor: float):
  """The sparse row update through the exchange: ``ids`` (batch-sharded) and their row
  gradients ``grads`` (``ids.shape + (dim,)``). Returns ``(table, row_state, row_grad_sq)``:
  the last is the sum over updated rows of their squared summed gradient (the GSPMD path's
  ``learning/row_grad_norm`` before the root). Ids past the capacity (``lookup`` counts
  them) are not updated."""
  vocab, dim = table.shape
  plan = _Plan(mesh, vocab, ids, factor)
  state_specs = sparse.row_state_specs(P(AXES, None), cfg)

  def body(block, state, step, local_ids, local_grads):
    chunk = plan.chunk(_flat(local_ids).astype(jnp.int32), vocab)
    g = plan.chunk(_flat([x.astype(jnp.float32) for x in local_grads], 1), 0)
    distinct, inverse = sparse.unique_ids(chunk, vocab)
    summed = jax.ops.segment_sum(g, inverse, num_segments=plan.k)
    dest, _, _ = plan.route(distinct)
    got_ids = plan.send(dest, distinct, -1).reshape(-1)
    got = plan.send(dest, summed, 0).reshape(-1, dim)
    rows, row_grads = sparse.unique_rows(plan.local(got_ids), got, plan.per)
    block, state = sparse.update_rows(block, state, rows, row_grads, step, cfg)
    sq = jnp.sum(jnp.mean(jnp.square(row_grads), axis=-1)) * dim
    return block, state, jax.lax.psum(sq, AXES)

  return jax.shard_map(
      body, mesh=mesh,
      in_specs=(P(AXES, None), state_specs, P(), (P("data"),) * len(ids),
                (P("data"),) * len(grads)),
      out_specs=(P(AXES, None), state_specs, P()), check_vma=False)(
          table, row_state, step, tuple(ids), tuple(grads))
