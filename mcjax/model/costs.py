"""Model costs: parameter counts (tables vs dense) and FLOPs per example from XLA's cost
analysis of the compiled forward, or forward + backward, pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mcjax.model.embedding import Embedding


def _count(state) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def param_count(model: nnx.Module) -> dict[str, int]:
  """{"tables": embedding rows x dim, "dense": everything else, "total"}."""
  _, tables, dense = nnx.split(model, Embedding, nnx.Param)
  counts = {"tables": _count(tables), "dense": _count(dense)}
  counts["total"] = counts["tables"] + counts["dense"]
  return counts


def _flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError("XLA cost analysis reported no 'flops' on this backend")
  return float(analysis["flops"])


def flops_per_example(model: nnx.Module, batch: dict, backward: bool = False) -> float:
  """FLOPs per example of the compiled forward pass (hashing, gather and dense math), or with
  ``backward`` of forward + backward as the trainer runs it: gradients of a scalar of all
  outputs with respect to the dense parameters, the gathered rows (sparse updates) and the
  tables the model reads itself (``inline_tables``; only those get nonzero gradients)."""
  graphdef, tables, dense = nnx.split(model, Embedding, nnx.Param)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  batch_size = batch["user_id"].shape[0]

  def forward(tables, dense, batch):
    return nnx.merge(graphdef, tables, dense)(batch)

  def train_pass(tables, dense, batch):
    m = nnx.merge(graphdef, tables, dense)
    rows = m.gather(m.lookup_ids(batch))

    def loss(dense, rows, tables):
      out = nnx.merge(graphdef, tables, dense).apply_rows(batch, rows, train=True)
      return sum(jnp.sum(v) for v in out.values())

    return jax.grad(loss, argnums=(0, 1, 2))(dense, rows, tables)

  return _flops(train_pass if backward else forward, tables, dense, batch) / batch_size
