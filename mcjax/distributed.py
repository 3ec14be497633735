"""Multi-process start-up (``jax.distributed.initialize`` from flags or the environment), and
the two helpers the trainer needs across processes: a barrier and an all-gather to the host.

One process (the default) needs nothing. With several, give the coordinator address, the
process count and this process's index (flags of the launchers), or let JAX read them from a
cluster environment (SLURM, TPU pods, ``JAX_COORDINATOR_ADDRESS`` ...). On CPU, cross-process
collectives use gloo.
"""

from __future__ import annotations

import os

import jax
import numpy as np


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Initialises the JAX distributed runtime when more than one process is involved."""
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError("--coordinator, --num_processes and --process_id go together "
                     f"(got coordinator={coordinator}, num_processes={num_processes}, "
                     f"process_id={process_id})")
  from_env = "JAX_COORDINATOR_ADDRESS" in os.environ
  if not all(given) and not from_env:
    return
  if all(given) and num_processes <= 1:
    return
  if all(given) and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if all(given):
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()


def sync(name: str) -> None:
  """A barrier of every process (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def gather(x) -> np.ndarray:
  """A global array (sharded over processes) as one host numpy array in every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
