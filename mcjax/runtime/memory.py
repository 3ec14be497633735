"""Memory before work: what a config needs, estimated from shapes alone, against this machine.

``estimate(cfg)`` adds up, without allocating anything:

* state: the train state's arrays (embedding tables, dense parameters, the row optimizer's
  accumulators, AdamW's two moments), from the abstract state (``state.setup``): exact;
* batches: one global batch of model inputs is ``row_bytes`` per example (the sample
  schema's fields at the config's history lengths, ``schema.dummy_batch``), and
  ``BATCHES_IN_FLIGHT`` of them are alive at once (Grain's read and prefetch buffers, the
  one on the device, its padded copy);
* activations: the forward pass's intermediate arrays per example, summed over the traced
  program (``jax.make_jaxpr`` of evaluation's forward at batch 16, divided by 16: histories
  and attention included; the few batch-independent arrays add a little), times
  ``TRAIN_ACTIVATION_FACTOR`` for a train step (the forward's residuals kept for the backward
  pass, plus the backward's own), or once for an evaluation batch.

``check(cfg, limit_bytes)`` refuses a config whose estimate exceeds the limit (default: this
machine's available memory, ``/proc/meminfo``'s MemAvailable; on an accelerator, the device's
``bytes_limit`` for the state and activations) with one line giving the estimate, the part
that dominates and the largest batch size that fits. The estimate is compared with the
measured peak in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

BATCHES_IN_FLIGHT = 4
TRAIN_ACTIVATION_FACTOR = 2.0
_HEADROOM = 0.9  # of the available memory that a run may plan to use
_BASE_BYTES = 1 << 30  # the Python process, jax, XLA and the loaded libraries


class MemoryFitError(ValueError):
  """A config whose estimated memory exceeds the machine's."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per part (host memory on CPU; ``device`` parts on an accelerator)."""
  state: int
  row_bytes: int              # one example's model inputs
  activation_row_bytes: int   # one example's forward intermediates
  batch_size: int
  eval_batch_size: int

  def parts(self, batch_size: int | None = None) -> dict[str, int]:
    b = self.batch_size if batch_size is None else batch_size
    act = int(self.activation_row_bytes * max(TRAIN_ACTIVATION_FACTOR * b,
                                              self.eval_batch_size))
    return {"state (tables, parameters, optimizer)": self.state,
            f"batches ({BATCHES_IN_FLIGHT} in flight)":
                BATCHES_IN_FLIGHT * self.row_bytes * max(b, self.eval_batch_size),
            "activations": act, "runtime (python, jax, XLA)": _BASE_BYTES}

  def total(self, batch_size: int | None = None) -> int:
    return sum(self.parts(batch_size).values())

  def largest_batch(self, limit: int) -> int:
    """The largest batch size whose total fits ``limit`` (0 when none does)."""
    per_row = BATCHES_IN_FLIGHT * self.row_bytes + (
        TRAIN_ACTIVATION_FACTOR * self.activation_row_bytes)
    fixed = self.total(0) - BATCHES_IN_FLIGHT * self.row_bytes * self.eval_batch_size - int(
        self.activation_row_bytes * self.eval_batch_size)
    return max(int((limit - fixed) // per_row), 0)


def _intermediate_bytes(jaxpr) -> int:
  """Bytes of every array a traced program computes (sub-programs included, once)."""
  total = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      aval = getattr(v, "aval", None)
      if hasattr(aval, "shape") and hasattr(aval, "dtype"):
        total += int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _intermediate_bytes(inner)
  return total


def estimate(cfg) -> Estimate:
  """The memory ``cfg`` needs (see the module docstring); traces, never allocates."""
  from mcjax.contract import schema  # pylint: disable=g-import-not-at-top
  from mcjax.model import build_model  # pylint: disable=g-import-not-at-top
  from mcjax.contract import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from mcjax.runtime import partition  # pylint: disable=g-import-not-at-top
  from mcjax.runtime import state as state_lib  # pylint: disable=g-import-not-at-top
  from mcjax.runtime import step as step_lib  # pylint: disable=g-import-not-at-top
  model_def, abstract, _ = state_lib.setup(
      functools.partial(build_model, cfg.model), state_lib.optim_config(cfg),
      **partition.from_config(cfg.mesh))
  state = sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
              for a in jax.tree.leaves(abstract))
  sv, lv = int(cfg.moment.sv_hist_len), int(cfg.moment.lv_hist_len)
  row = schema.dummy_batch(1, sv, lv)
  row_bytes = sum(v.nbytes for v in row.values())

  def traced(b: int) -> int:
    batch = batch_lib.host_batch(schema.dummy_batch(b, sv, lv))
    batch = {k: jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype)
             for k in schema.MODEL_INPUTS}
    fwd = functools.partial(step_lib.eval_forward, model_def)
    return _intermediate_bytes(jax.make_jaxpr(fwd)(abstract.tables, abstract.params,
                                                   abstract.rest, batch).jaxpr)

  act = traced(16) // 16  # the per-example part (constants, e.g. cast weights, / 16: small)
  t = cfg.train
  return Estimate(state, row_bytes, act, int(t.batch_size), int(t.eval_batch_size))


def available_bytes() -> int | None:
  """This machine's available memory (``/proc/meminfo`` MemAvailable); None when unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def device_bytes() -> int | None:
  """The memory of one accelerator (None on CPU, where the host's memory is what counts)."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    return None
  stats = device.memory_stats() or {}
  return stats.get("bytes_limit")


def _gb(n: float) -> str:
  return f"{n / 2**30:.1f} GB"


def check(cfg, limit_bytes: int | None = None) -> Estimate:
  """Refuses ``cfg`` when its estimate exceeds ``limit_bytes`` (default: the available host
  memory, or on an accelerator the memory of the devices) with one MemoryFitError line."""
  est = estimate(cfg)
  where = "--memory_limit_gb"
  total, parts = est.total(), est.parts()
  if limit_bytes is None:
    per_device = device_bytes()
    if per_device is not None:  # state and activations split over the devices
      limit_bytes, where = int(per_device * jax.device_count() * _HEADROOM), "device memory"
      total -= parts[f"batches ({BATCHES_IN_FLIGHT} in flight)"] + _BASE_BYTES
    else:
      avail = available_bytes()
      if avail is None:
        return est
      limit_bytes, where = int(avail * _HEADROOM), "available memory"
  if total > limit_bytes:
    name, biggest = max(parts.items(), key=lambda kv: kv[1])
    fits = est.largest_batch(limit_bytes)
    raise MemoryFitError(
        f"config.train.batch_size={est.batch_size}: needs about {_gb(total)}, more than the "
        f"{_gb(limit_bytes)} of {where} (mostly {name}: {_gb(biggest)}); the largest batch "
        f"size that fits is {fits}" + ("" if fits else " (none: shrink the model)") +
        " (--memory_limit_gb overrides the limit)")
  return est
