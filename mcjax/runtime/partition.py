"""Partition rules: parameter path -> PartitionSpec, and the check that big tensors are sharded.

Sharding policy is data (big_vision / MaxText style), kept in the experiment config as
``config.mesh.rules`` and ``config.mesh.logical_rules`` (``from_config`` reads them):
  1. ``rules``: an ordered list of ``(regex, PartitionSpec)``; the regex is searched in the
     parameter's path joined with "/" (e.g. ``"tables/user"``); the first match wins.
  2. Otherwise the parameter's logical axis names (its ``out_sharding`` metadata, set where the
     model creates it, e.g. ``("vocab", "embed")`` on an embedding table) are mapped to mesh
     axes by ``logical_rules``.
  3. Otherwise the parameter is replicated; ``check_sharding`` turns a large replicated
     parameter into an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mcjax.model import config as model_config
from mcjax.runtime.mesh import AXES

Rules = Sequence[tuple[str, P]]
LogicalRules = Sequence[tuple[str, str | None]]

RULES: Rules = ()  # no regex rules by default: the model annotates its tables
LOGICAL_RULES: LogicalRules = model_config.LOGICAL_RULES


def from_config(mesh_cfg) -> dict:
  """``rules`` and ``logical_rules`` from a config's ``mesh`` section, as keyword arguments of
  ``state.setup`` / ``state.create_train_state``; a rule's spec is a tuple of mesh axis names
  (or None) in the config and a PartitionSpec here. A run's config.json from before these keys
  existed gets the defaults (the policy those runs were trained with)."""
  rules = mesh_cfg.get("rules", ())
  logical_rules = tuple((name, axis) for name, axis in mesh_cfg.get("logical_rules",
                                                                     LOGICAL_RULES))
  if exchange_capacity(mesh_cfg) is not None:  # the exchange's layout: rows over every device
    logical_rules = tuple((name, AXES if name == "vocab" else axis)
                          for name, axis in logical_rules)
  return {"rules": tuple((pattern, P(*spec)) for pattern, spec in rules),
          "logical_rules": logical_rules}


def check_table_rows(cfg, mesh) -> None:
  """ValueError (one line, naming the key) when a "vocab"-sharded table's rows do not split
  evenly over the mesh axes its rows are sharded on (``from_config``'s logical rules)."""
  emb = cfg.model.embedding
  axis = dict(from_config(cfg.mesh)["logical_rules"]).get("vocab")
  axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
  shards = 1
  for a in axes:
    shards *= int(mesh.shape[a])
  for name, rows in emb.vocab.items():
    if rows >= emb.large_table_rows and rows % shards:
      how = ("mesh.embedding_exchange=all_to_all shards large tables over every device"
             if exchange_capacity(cfg.mesh) is not None else
             "large tables are row-sharded on the mesh's model axis")
      raise ValueError(f"model.embedding.vocab.{name}={rows}: {rows} rows do not split over "
                       f"the {shards} devices of {axes} ({how}); give a multiple of {shards}, "
                       f"e.g. {-(-rows // shards) * shards}")


def exchange_capacity(mesh_cfg) -> float | None:
  """``mesh.exchange_capacity`` when ``mesh.embedding_exchange`` is "all_to_all" (large
  tables then shard over every device, the "vocab" logical axis on ("data", "model"), and the
  train step looks them up and updates them through ``mcjax.runtime.exchange``), else None."""
  if mesh_cfg.get("embedding_exchange", "gspmd") != "all_to_all":
    return None
  return float(mesh_cfg.exchange_capacity)


def path_str(path: Sequence) -> str:
  """'a/b/0/c' from a tuple path or a jax key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        k = getattr(k, attr)
        break
    parts.append(str(k))
  return "/".join(parts)


def logical_to_spec(names: Sequence[str | None], logical_rules: LogicalRules, where: str) -> P:
  table = dict(logical_rules)
  axes = []
  for name in names:
    if name is None:
      axes.append(None)
    elif name in table:
      axes.append(table[name])
    else:
      raise ValueError(
          f"parameter {where!r}: logical axis {name!r} has no entry in logical_rules "
          f"(known: {sorted(table)})")
  return P(*axes)


def spec_for(path: str, variable, rules: Rules = RULES,
             logical_rules: LogicalRules = LOGICAL_RULES) -> P:
  """The PartitionSpec of one nnx Variable (or plain array) at ``path``."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      return spec
  names = None
  if isinstance(variable, nnx.Variable):
    names = variable.get_metadata().get("out_sharding")
  if names:
    return logical_to_spec(names, logical_rules, path)
  return P()


def state_specs(state: nnx.State, rules: Rules = RULES,
                logical_rules: LogicalRules = LOGICAL_RULES) -> dict:
  """PartitionSpecs for an (abstract) ``nnx.State``, as a pure dict shaped like
  ``nnx.to_pure_dict(state)``."""
  flat = {path: spec_for(path_str(path), var, rules, logical_rules)
          for path, var in nnx.to_flat_state(state)}
  return traverse_util.unflatten_dict(flat) if flat else {}


def to_shardings(specs, mesh: Mesh):
  """PartitionSpec tree -> NamedSharding tree."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def _leaf_bytes(leaf) -> int:
  if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    return 0
  return int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize


def check_sharding(tree, mesh: Mesh, max_replicated_bytes: int = 16 << 20) -> None:
  """Raises if a leaf larger than ``max_replicated_bytes`` is fully replicated on a mesh of
  more than one device. ``tree`` holds jax Arrays or ShapeDtypeStructs with shardings."""
  if mesh.size == 1:
    return
  offenders = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    nbytes = _leaf_bytes(leaf)
    if nbytes <= max_replicated_bytes:
      continue
    sharding = getattr(leaf, "sharding", None)
    if sharding is None or sharding.is_fully_replicated:
      offenders.append(f"{path_str(path)} ({nbytes / 2**20:.1f} MiB, shape {tuple(leaf.shape)})")
  if offenders:
    raise ValueError(
        f"parameters above {max_replicated_bytes} bytes are replicated on mesh "
        f"{dict(mesh.shape)}: {', '.join(offenders)}; add a partition rule, annotate "
        "the parameter with a logical axis mapped to a mesh axis of size > 1, or raise "
        "max_replicated_bytes")
