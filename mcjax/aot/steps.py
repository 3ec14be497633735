"""The train and evaluation steps of a config on a mesh, from abstract shapes only.

``abstract_steps`` is the one place this package (and ``benchmarks.comms``) wires a config
into a model, a sharded state and the jitted steps; ``compile_steps`` lowers them with
``jax.ShapeDtypeStruct`` arguments that carry their ``NamedSharding``s, so nothing is
allocated: a 10^9-row table costs nothing to compile. The mesh may hold any devices, host
devices or the devices of a TPU topology (``mcjax.aot.topology``), whose steps are then
compiled by the TPU compiler.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import ml_collections
from jax.sharding import Mesh

from mcjax import losses
from mcjax.contract import schema
from mcjax.model import build_model
from mcjax.train import mesh as mesh_lib
from mcjax.train import partition
from mcjax.train import state as state_lib
from mcjax.train import step as step_lib


@dataclasses.dataclass
class AbstractSteps:
  """The jitted steps of a config on a mesh, and their abstract (sharded) arguments."""
  train_step: Callable
  eval_step: Callable
  state: step_lib.TrainState
  batch: dict


def abstract_batch(cfg: ml_collections.ConfigDict, mesh: Mesh, global_batch: int) -> dict:
  """The step's batch as ``ShapeDtypeStruct``s split over "data": field shapes and dtypes of
  one example as the steps take them (``step.host_batch``), batch axis widened."""
  one = step_lib.host_batch(schema.dummy_batch(1, int(cfg.moment.sv_hist_len),
                                               int(cfg.moment.lv_hist_len)))
  sharding = mesh_lib.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((global_batch,) + v.shape[1:], v.dtype, sharding=sharding)
          for k, v in one.items()}


def abstract_steps(cfg: ml_collections.ConfigDict, mesh: Mesh,
                   batch_per_device: int) -> AbstractSteps:
  """The trainer's wiring (model, partition rules, optimizer, loss, sparse step, exchange)
  for ``cfg`` on ``mesh``, with the state and a batch of ``batch_per_device`` x devices
  examples as abstract sharded arguments."""
  optim = state_lib.optim_config(cfg)
  model_def, abstract, specs = state_lib.setup(functools.partial(build_model, cfg.model),
                                               optim, **partition.from_config(cfg.mesh))
  shardings = partition.to_shardings(specs, mesh)
  loss_fn = functools.partial(losses.compute_loss, cfg=cfg.loss)
  capacity = partition.exchange_capacity(cfg.mesh)
  train_step = step_lib.make_train_step(
      model_def, optim, loss_fn, shardings, mesh,
      dense_below_rows=int(cfg.model.embedding.large_table_rows), exchange_capacity=capacity)
  eval_step = step_lib.make_eval_step(model_def, loss_fn, shardings, mesh,
                                      exchange_capacity=capacity)
  return AbstractSteps(train_step, eval_step,
                       state_lib.abstract_with_shardings(abstract, specs, mesh),
                       abstract_batch(cfg, mesh, batch_per_device * mesh.devices.size))


def compile_steps(steps: AbstractSteps, which=("train", "eval"),
                  compiler_options: dict | None = None) -> dict:
  """name -> (compiled executable, compile seconds) for the steps named in ``which``."""
  out = {}
  for name in which:
    fn = {"train": steps.train_step, "eval": steps.eval_step}[name]
    start = time.perf_counter()
    compiled = fn.lower(steps.state, steps.batch).compile(compiler_options=compiler_options)
    out[name] = (compiled, time.perf_counter() - start)
  return out
