"""The device mesh: axes ("data", "model") in Auto (GSPMD) mode, and the batch sharding.

The batch is split on "data"; large embedding tables are row-sharded on "model". Auto axes
let XLA partition gathers and scatters into row-sharded tables without sharding hints (an
Explicit mesh would require ``out_sharding`` hints on every lookup).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "model")


def resolve_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int]:
  """Replaces a single -1 in a (data, model) shape by the rest of ``num_devices``."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(AXES):
    raise ValueError(f"mesh shape must have {len(AXES)} entries {AXES}, got {shape}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: entries must be positive, with at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if num_devices % known:
    raise ValueError(f"mesh shape {shape} does not divide the {num_devices} devices")
  shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
        f"mesh shape {shape} uses {int(np.prod(shape))} devices, but there are {num_devices}; "
        "use -1 for 'the rest' or pass devices=")
  return shape


def make_mesh(shape: Sequence[int] = (-1, 1), devices: Sequence | None = None) -> Mesh:
  """A ("data", "model") mesh over ``devices`` (default: all), -1 meaning "the rest".

  Example: ``make_mesh((-1, 1))`` is pure data parallelism, ``make_mesh((2, 4))`` splits
  8 devices into 2 data-parallel groups of 4 devices sharing the tables' rows.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_shape(shape, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension on "data", everything else replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_layout(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """The resolved mesh shape; refuses layouts the batch cannot be split over (over the data
  axis, and over the processes: several need a data axis divisible by their count)."""
  try:
    shape = resolve_shape(tuple(cfg.mesh.shape), jax.device_count())
  except ValueError as e:
    raise ValueError(f"config.mesh.shape: {e}") from None
  processes = jax.process_count()
  if shape[0] % processes:  # each process feeds its own rows of every batch to its devices
    raise ValueError(f"config.mesh.shape: the data axis ({shape[0]} of mesh {shape}) is not "
                     f"divisible by the {processes} processes, each of which feeds its own "
                     "rows of every batch")
  for key in ("batch_size", "eval_batch_size"):
    b = cfg.train[key]
    if b % shape[0]:
      raise ValueError(f"config.train.{key}={b} is not divisible by the data axis "
                       f"({shape[0]} of mesh {shape})")
    if b % jax.process_count():
      raise ValueError(f"config.train.{key}={b} is not divisible by the "
                       f"{jax.process_count()} processes")
  return shape
