"""``build(cfg, mesh)``: config -> model definition, state, shardings and steps, written once.

    rt = build(cfg, mesh)                       # state initialised on its shards (cfg.seed)
    state, metrics = rt.train_step(rt.state, batch)
    probs, metrics = rt.eval_step(rt.state, batch)

    rt = build(cfg, mesh, init=False)           # nothing allocated: ``rt.state`` holds
    state = checkpointer.restore(rt.state)      # ShapeDtypeStructs with their shardings

The model is ``mcjax.model.build_model(cfg.model)``, sharded by the partition rules of
``cfg.mesh`` (``partition.from_config``); the optimizer is ``state.optim_config(cfg)``, the
loss ``mcjax.losses.compute_loss`` with ``cfg.loss``. The steps are jitted with the
embedding exchange of ``cfg.mesh`` (``partition.exchange_capacity``) and, in training,
tables below ``cfg.model.embedding.large_table_rows`` rows dense-updated. Compiling is left
to the first call (or to ``train_step.lower(...)``), so a program that only scores never
compiles a train step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import ml_collections
from jax.sharding import Mesh

from mcjax import losses
from mcjax.model import build_model
from mcjax.runtime import partition
from mcjax.runtime import state as state_lib
from mcjax.runtime import step as step_lib


@dataclasses.dataclass(frozen=True)
class Runtime:
  """What ``build`` returns; ``state`` is concrete arrays, or with ``init=False`` the
  abstract restore target (ShapeDtypeStructs carrying their shardings)."""
  cfg: ml_collections.ConfigDict
  mesh: Mesh
  model_def: state_lib.ModelDef
  optim: state_lib.OptimConfig
  state: state_lib.TrainState
  shardings: state_lib.TrainState  # NamedShardings, the structure of ``state``
  loss_fn: Callable
  train_step: Callable  # jitted (state, batch) -> (state, metrics); donates the state
  eval_step: Callable   # jitted (state, batch) -> (probs [B, T], metrics)


def build(cfg: ml_collections.ConfigDict, mesh: Mesh, *, init: bool = True,
          sparse_update: bool = True, check_replicated: bool = True) -> Runtime:
  """The runtime of ``cfg`` on ``mesh``.

  Args:
    cfg: an experiment config (``mcjax.config``).
    mesh: the device mesh (``mesh.make_mesh``).
    init: initialise the state on its shards with ``cfg.seed``; False: the abstract state
      (restore target, or lowering without allocating).
    sparse_update: row updates of the large tables (False: the dense O(vocabulary)
      reference, for tests and benchmarks).
    check_replicated: refuse (ValueError) a parameter above ``cfg.mesh.max_replicated_mb``
      that would be replicated (``partition.check_sharding``).
  """
  optim = state_lib.optim_config(cfg)
  build_fn = functools.partial(build_model, cfg.model)
  partition.check_table_rows(cfg, mesh)
  rules = partition.from_config(cfg.mesh)
  max_bytes = int(cfg.mesh.max_replicated_mb * 2**20) if check_replicated else None
  if init:
    model_def, state, shardings = state_lib.create_train_state(
        build_fn, mesh, optim, seed=cfg.seed, max_replicated_bytes=max_bytes, **rules)
  else:
    model_def, abstract, specs = state_lib.setup(build_fn, optim, **rules)
    state = state_lib.abstract_with_shardings(abstract, specs, mesh)
    shardings = partition.to_shardings(specs, mesh)
    if max_bytes is not None:
      partition.check_sharding(state, mesh, max_bytes)
  loss_fn = functools.partial(losses.compute_loss, cfg=cfg.loss)
  capacity = partition.exchange_capacity(cfg.mesh)
  train_step = step_lib.make_train_step(
      model_def, optim, loss_fn, shardings, mesh, sparse_update=sparse_update,
      dense_below_rows=int(cfg.model.embedding.large_table_rows), exchange_capacity=capacity)
  eval_step = step_lib.make_eval_step(model_def, loss_fn, shardings, mesh,
                                      exchange_capacity=capacity)
  return Runtime(cfg=cfg, mesh=mesh, model_def=model_def, optim=optim, state=state,
                 shardings=shardings, loss_fn=loss_fn, train_step=train_step,
                 eval_step=eval_step)
