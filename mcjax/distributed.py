"""Multi-process start-up (``jax.distributed.initialize`` from flags or the environment), and
the helpers the trainers need across processes: a barrier, all-gathers to the host
(``gather``, ``host``) and decisions every process takes together (``first``, ``any_of``).

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


def is_main() -> bool:
  """Whether this is process 0 (the one that writes a run's shared files)."""
  return jax.process_index() == 0


def _identity(x):
  return x


def host(tree):
  """Host numpy copies of a tree of arrays, in every process. Arrays spread over several
  processes are gathered together in one collective, so every process must call this at the
  same point of the program (nothing happens across processes with one process)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(tree)
  far = [i for i, x in enumerate(leaves)
         if isinstance(x, jax.Array) and not x.is_fully_addressable]
  named = [i for i in far if isinstance(leaves[i].sharding, NamedSharding)]
  if named:  # one program replicates them all
    whole = [NamedSharding(leaves[i].sharding.mesh, PartitionSpec()) for i in named]
    got = jax.jit(_identity, out_shardings=whole)([leaves[i] for i in named])
    for i, x in zip(named, got):
      leaves[i] = x.addressable_data(0)
  for i in far:
    if i not in named:
      leaves[i] = gather(leaves[i])
  return jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])


def first(flag: bool) -> bool:
  """Process 0's ``flag`` in every process (one collective with several processes): a
  decision taken on process 0's clock, the same everywhere."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag), np.int32)))


def any_of(flag: bool) -> bool:
  """Whether ``flag`` is true in any process (one collective with several processes)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))
