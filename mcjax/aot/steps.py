"""The train and evaluation steps, and the scorer's forward, of a config on a mesh, from
abstract shapes only.

``abstract_steps`` takes the jitted steps and the abstract sharded state from
``mcjax.runtime.build`` (the wiring the trainer, the scorer and the benchmarks use), so the
compiled program is the one a pod job runs; ``compile_steps`` lowers them with
``jax.ShapeDtypeStruct`` arguments that carry their ``NamedSharding``s, so nothing is
allocated: a 10^9-row table costs nothing to compile. The mesh may hold any devices, host
devices or the devices of a TPU topology (``mcjax.aot.topology``), whose steps are then
compiled by the TPU compiler.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import ml_collections
from jax.sharding import Mesh

from mcjax import runtime
from mcjax.contract import batch as batch_lib
from mcjax.contract import schema
from mcjax.runtime import mesh as mesh_lib
from mcjax.runtime import step as step_lib


@dataclasses.dataclass
class AbstractSteps:
  """The jitted steps of a config on a mesh, and their abstract (sharded) arguments."""
  train_step: Callable
  eval_step: Callable
  state: step_lib.TrainState
  batch: dict
  score_fn: Callable   # the serving Scorer's jitted forward: (weights, model inputs)
  weights: dict        # what a Scorer serves: the state's tables, params and rest
  inputs: dict         # the batch's model inputs (a scoring call of the same rows)


def abstract_batch(cfg: ml_collections.ConfigDict, mesh: Mesh, global_batch: int) -> dict:
  """The step's batch as ``ShapeDtypeStruct``s split over "data": field shapes and dtypes of
  one example as the steps take them (``contract.batch.host_batch``), batch axis widened."""
  one = batch_lib.host_batch(schema.dummy_batch(1, int(cfg.moment.sv_hist_len),
                                               int(cfg.moment.lv_hist_len)))
  sharding = mesh_lib.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((global_batch,) + v.shape[1:], v.dtype, sharding=sharding)
          for k, v in one.items()}


def abstract_steps(cfg: ml_collections.ConfigDict, mesh: Mesh,
                   batch_per_device: int) -> AbstractSteps:
  """The trainer's wiring (model, partition rules, optimizer, loss, sparse step, exchange)
  for ``cfg`` on ``mesh``, with the state and a batch of ``batch_per_device`` x devices
  examples as abstract sharded arguments."""
  from mcjax.serve.scorer import Scorer  # pylint: disable=g-import-not-at-top
  rt = runtime.build(cfg, mesh, init=False, check_replicated=False)  # nothing allocated
  batch = abstract_batch(cfg, mesh, batch_per_device * mesh.devices.size)
  weights = {"tables": rt.state.tables, "params": rt.state.params, "rest": rt.state.rest}
  scorer = Scorer(cfg, rt.model_def, weights, mesh)
  return AbstractSteps(rt.train_step, rt.eval_step, rt.state, batch, scorer._jit, weights,
                       {k: batch[k] for k in schema.MODEL_INPUTS})


STEPS = ("train", "eval", "score")


def compile_steps(steps: AbstractSteps, which=("train", "eval"),
                  compiler_options: dict | None = None) -> dict:
  """name -> (compiled executable, compile seconds) for the steps named in ``which`` (of
  ``STEPS``; "score": the serving forward on the batch's rows)."""
  out = {}
  for name in which:
    fn, args = {"train": (steps.train_step, (steps.state, steps.batch)),
                "eval": (steps.eval_step, (steps.state, steps.batch)),
                "score": (steps.score_fn, (steps.weights, steps.inputs))}[name]
    start = time.perf_counter()
    compiled = fn.lower(*args).compile(compiler_options=compiler_options)
    out[name] = (compiled, time.perf_counter() - start)
  return out
