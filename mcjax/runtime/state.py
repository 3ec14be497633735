"""The train state: a graphdef-free pytree of arrays, born sharded on the mesh.

``nnx.split`` runs once (on an abstract model) to get the static ``ModelDef``; afterwards the
step is a plain ``jax.jit`` over ``TrainState``. The model's variables are split into
embedding ``tables`` (the ``table_filter`` class), dense ``params`` (other ``nnx.Param``) and
``rest`` (RNG counters, statistics), each stored as a pure nested dict.

Parameters are born sharded: shapes come from ``nnx.eval_shape``, shardings from the
partition rules, then one ``jax.jit(init, out_shardings=...)`` materialises every array on
its shards (a huge table never sits whole on one device). The optimizer states get explicit
shardings derived from their parameters' (``jax.jit(tx.init)`` alone would replicate them on
an Auto mesh).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct, traverse_util
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mcjax.runtime import partition, sparse


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar, number of updates applied
  params: dict  # dense nnx.Param values (pure dict)
  tables: dict  # embedding tables (pure dict)
  rest: dict  # other model variables (pure dict)
  opt_state: Any  # optax state of params
  row_state: dict  # per table: sparse.init_row_state dict


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Dense AdamW (with global-norm clipping and linear warmup) plus the row optimizer."""
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4  # applied to dense params with ndim >= 2
  clip_norm: float | None = 1.0  # None: no clipping (dense gradients only)
  warmup_steps: int = 0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  rows: sparse.RowOptConfig = sparse.RowOptConfig()

  def schedule(self) -> optax.Schedule:
    if self.warmup_steps <= 0:
      return optax.constant_schedule(self.learning_rate)
    return optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps)

  def dense_tx(self) -> optax.GradientTransformation:
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    adamw = optax.adamw(self.schedule(), b1=self.b1, b2=self.b2, eps=self.eps,
                        weight_decay=self.weight_decay, mask=mask)
    if self.clip_norm is None:
      return adamw
    return optax.chain(optax.clip_by_global_norm(self.clip_norm), adamw)


def optim_config(cfg) -> OptimConfig:
  """The optimizer of an experiment config's ``train`` section (dense AdamW, row Adagrad)."""
  t = cfg.train
  return OptimConfig(learning_rate=t.learning_rate, weight_decay=t.weight_decay,
                     clip_norm=t.grad_clip if t.grad_clip > 0 else None,
                     warmup_steps=int(t.get("warmup_steps", 0)),
                     rows=sparse.RowOptConfig(
                         learning_rate=t.embedding_learning_rate,
                         initial_accumulator=float(t.get("embedding_initial_accumulator", 0.0))))


def default_table_filter():
  """The real model's embedding Variable class."""
  from mcjax.model.embedding import Embedding  # pylint: disable=g-import-not-at-top
  return Embedding


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
  """Static half of the split model: how to rebuild the module from a TrainState."""
  graphdef: Any
  table_filter: Any
  table_paths: tuple[tuple, ...]  # paths of the tables inside TrainState.tables

  def merge(self, tables: dict, params: dict, rest: dict) -> nnx.Module:
    return nnx.merge(self.graphdef, tables, params, rest)

  def split(self, model: nnx.Module) -> tuple[dict, dict, dict]:
    """(tables, params, rest) pure dicts of a module."""
    _, tables, params, rest = nnx.split(model, self.table_filter, nnx.Param, ...)
    return nnx.to_pure_dict(tables), nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def table_path(self, key: str) -> tuple:
    """The table that ``model.lookup_ids`` names ``key``: the path joined by '/' equal to
    ``key``, else the only path with ``key`` as one of its parts."""
    joined = {partition.path_str(p): p for p in self.table_paths}
    if key in joined:
      return joined[key]
    hits = [p for p in self.table_paths if key in map(str, p)]
    if len(hits) != 1:
      raise KeyError(
          f"lookup_ids key {key!r} matches {len(hits)} embedding tables; table paths: "
          f"{sorted(joined)}")
    return hits[0]


def _build(build_fn: Callable[..., nnx.Module], seed: int) -> nnx.Module:
  with nnx.use_eager_sharding(False):  # shardings come from out_shardings
    return build_fn(rngs=nnx.Rngs(seed))


def _init_state(model_def: ModelDef, build_fn, optim: OptimConfig, seed: int) -> TrainState:
  tables, params, rest = model_def.split(_build(build_fn, seed))
  row_state = jax.tree.map(lambda t: sparse.init_row_state(t, optim.rows), tables)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, tables=tables, rest=rest,
                    opt_state=optim.dense_tx().init(params), row_state=row_state)


# Init runs once, so on CPU it is compiled for compile speed: about 3x faster to compile a
# large model's initialisers (same random bits; float transforms may round differently).
INIT_COMPILER_OPTIONS = {
    "cpu": {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True},
}


def _is_spec(x) -> bool:
  return isinstance(x, P)


def setup(build_fn: Callable[..., nnx.Module], optim: OptimConfig, *, table_filter=None,
          rules: partition.Rules = partition.RULES,
          logical_rules: partition.LogicalRules = partition.LOGICAL_RULES):
  """Traces the model abstractly (no arrays allocated).

  Args:
    build_fn: called as ``build_fn(rngs=nnx.Rngs(seed))``, e.g.
      ``functools.partial(build_model, cfg)``.
    optim: optimizer configuration.
    table_filter: nnx filter (a Variable class) selecting the embedding tables; default
      ``mcjax.model.embedding.Embedding``.
    rules, logical_rules: partition rules (see ``partition``).

  Returns:
    ``(model_def, abstract_state, specs)``: the static ModelDef, a TrainState of
    ShapeDtypeStructs, and a TrainState of PartitionSpecs.
  """
  table_filter = default_table_filter() if table_filter is None else table_filter
  with nnx.use_eager_sharding(False):
    abstract_model = nnx.eval_shape(lambda: build_fn(rngs=nnx.Rngs(0)))
  graphdef, tables, params, rest = nnx.split(abstract_model, table_filter, nnx.Param, ...)
  table_paths = tuple(path for path, _ in nnx.to_flat_state(tables))
  for path, var in nnx.to_flat_state(tables):
    if len(var.shape) != 2:
      raise ValueError(f"embedding table {partition.path_str(path)!r} must be [vocab, dim], "
                       f"got shape {var.shape}")
  model_def = ModelDef(graphdef, table_filter, table_paths)
  abstract = jax.eval_shape(lambda: _init_state(model_def, build_fn, optim, 0))

  spec = lambda s: partition.state_specs(s, rules, logical_rules)  # noqa: E731
  param_specs, table_specs = spec(params), spec(tables)
  opt_specs = optax.tree_map_params(
      optim.dense_tx(), lambda _, s: s, abstract.opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=_is_spec)
  flat_tables = traverse_util.flatten_dict(table_specs)
  row_specs = {k: sparse.row_state_specs(s, optim.rows) for k, s in flat_tables.items()}
  row_specs = traverse_util.unflatten_dict(row_specs) if row_specs else {}
  specs = TrainState(step=P(), params=param_specs, tables=table_specs, rest=spec(rest),
                     opt_state=opt_specs, row_state=row_specs)
  return model_def, abstract, specs


def abstract_with_shardings(abstract: TrainState, specs: TrainState, mesh: Mesh) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings (the ``restore`` target)."""
  shardings = partition.to_shardings(specs, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def create_train_state(build_fn: Callable[..., nnx.Module], mesh: Mesh, optim: OptimConfig,
                       *, seed: int = 0, table_filter=None,
                       rules: partition.Rules = partition.RULES,
                       logical_rules: partition.LogicalRules = partition.LOGICAL_RULES,
                       max_replicated_bytes: int | None = 16 << 20):
  """Builds the train state directly on its shards.

  Returns:
    ``(model_def, state, shardings)``; ``shardings`` is a TrainState of NamedShardings
    (pass it to ``step.make_train_step`` and use it for checkpoint restores).
  Raises:
    ValueError from ``partition.check_sharding`` when a parameter above
    ``max_replicated_bytes`` would be replicated (None skips the check).
  """
  model_def, abstract, specs = setup(build_fn, optim, table_filter=table_filter, rules=rules,
                                     logical_rules=logical_rules)
  shardings = partition.to_shardings(specs, mesh)
  if max_replicated_bytes is not None:
    partition.check_sharding(abstract_with_shardings(abstract, specs, mesh), mesh,
                             max_replicated_bytes)
  init = jax.jit(lambda: _init_state(model_def, build_fn, optim, seed), out_shardings=shardings)
  options = INIT_COMPILER_OPTIONS.get(mesh.devices.flat[0].platform, {})
  with jax.set_mesh(mesh):
    state = init.lower().compile(compiler_options=options)()
  return model_def, state, shardings
