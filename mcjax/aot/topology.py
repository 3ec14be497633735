"""TPU slice names -> the devices of that slice, without a TPU (ahead-of-time compilation).

Two spellings are accepted:

* the accelerator-type names of the Cloud TPU docs, ``v5p-256``, ``v4-32``, ``v5e-16``
  (also ``v5litepod-16``), ``v6e-64``: for v4 and v5p the number counts TensorCores (two per
  chip: ``v5p-8`` is 4 chips, ``v5p-256`` 128 chips), for v5e and v6e it counts chips;
* the chip-grid form ``v5p:8x8x4`` / ``v5e:16x16`` (chips along each axis).

``devices`` returns the slice's devices from libtpu's topology description
(``jax.experimental.topologies``): a mesh over them lowers and compiles with the real TPU
compiler on a CPU-only machine. ``hbm_bytes`` is the chip's published HBM.
"""

from __future__ import annotations

import dataclasses
import math
import re

# chip generation -> (HBM bytes per chip, TensorCores counted per chip in the "-N" names,
# grid dimensions)
CHIPS = {
    "v4": (32e9, 2, 3),
    "v5p": (95e9, 2, 3),
    "v5e": (16e9, 1, 2),
    "v6e": (32e9, 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
# chip counts -> the documented slice shapes (the chip grid)
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A parsed slice: chip generation, chip grid, number of slices."""
  chip: str
  grid: tuple[int, ...]
  num_slices: int = 1

  @property
  def chips(self) -> int:
    return math.prod(self.grid) * self.num_slices

  @property
  def name(self) -> str:
    """The chip-grid spelling that libtpu takes, e.g. 'v5p:4x8x8'."""
    return f"{self.chip}:{'x'.join(map(str, self.grid))}"

  @property
  def accelerator_type(self) -> str:
    """The docs' name of one slice, e.g. 'v5p-256', 'v5litepod-16'."""
    per_chip = CHIPS[self.chip][1]
    prefix = "v5litepod" if self.chip == "v5e" else self.chip
    return f"{prefix}-{math.prod(self.grid) * per_chip}"

  @property
  def hbm_bytes(self) -> float:
    """HBM of one chip (bytes, decimal GB as published)."""
    return CHIPS[self.chip][0]

  def describe(self) -> str:
    slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
    return (f"{self.name}{slices} ({self.chips} chips, {self.hbm_bytes / 1e9:.0f} GB HBM "
            "per chip)")


@dataclasses.dataclass(frozen=True)
class Local:
  """This machine's own accelerators (``--topology=local``: e.g. the GPU ``benchmarks/gpu.sh``
  runs on), with the HBM the runtime reports."""
  num_slices: int = 1

  @property
  def chips(self) -> int:
    import jax
    return len(jax.devices())

  @property
  def name(self) -> str:
    import jax
    return f"local {jax.devices()[0].device_kind}"

  accelerator_type = name

  @property
  def hbm_bytes(self) -> float:
    """The first device's memory limit (``memory_stats``); ValueError where it has none."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
      raise ValueError(f"--topology=local: {jax.devices()[0].platform} devices report no "
                       "memory limit")
    return float(stats["bytes_limit"])

  def describe(self) -> str:
    return f"{self.name} ({self.chips} devices, {self.hbm_bytes / 1e9:.0f} GB each)"


def parse(name: str, num_slices: int = 1):
  """'v5p-256' / 'v5p:8x8x4' (see the module doc) -> Topology; ValueError naming --topology
  for anything else."""
  def fail(why: str):
    raise ValueError(f"--topology={name}: {why}; give e.g. v5p-256, v5e-16 or v5p:8x8x4")

  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: must be >= 1")
  text = name.strip().lower()
  if text == "local":
    if num_slices != 1:
      raise ValueError("--num_slices: only 1 with --topology=local")
    return Local()
  m = re.fullmatch(r"([a-z0-9]+?)(?::([\dx]+)|-(\d+))", text)
  if not m:
    fail("not a TPU slice name")
  chip = _ALIASES.get(m.group(1), m.group(1))
  if chip not in CHIPS:
    fail(f"unknown chip {m.group(1)!r} (known: {', '.join(CHIPS)})")
  _, cores_per_chip, ndim = CHIPS[chip]
  if m.group(2):
    grid = tuple(int(x) for x in m.group(2).split("x") if x)
    if len(grid) != ndim or min(grid) < 1:
      fail(f"{chip} slices are {ndim}-d chip grids (like {'x'.join(['2'] * ndim)})")
  else:
    count = int(m.group(3))
    if count % cores_per_chip:
      fail(f"{chip}-N counts TensorCores, {cores_per_chip} per chip")
    shapes = _SHAPES_3D if ndim == 3 else _SHAPES_2D
    grid = shapes.get(count // cores_per_chip)
    if grid is None:
      sizes = ", ".join(f"{chip}-{c * cores_per_chip}" for c in sorted(shapes))
      fail(f"no documented {chip} slice of {count // cores_per_chip} chips ({sizes})")
  return Topology(chip, grid, num_slices)


def for_chips(chip: str, chips: int, num_slices: int = 1) -> Topology:
  """The documented slice of ``chips`` chips of a generation (e.g. 'v5p', 256)."""
  chip = _ALIASES.get(chip, chip)
  if chip not in CHIPS:
    raise ValueError(f"unknown TPU chip {chip!r} (known: {', '.join(CHIPS)})")
  return parse(f"{chip}-{chips * CHIPS[chip][1]}", num_slices)


def devices(topology) -> list:
  """The slice's devices as the TPU compiler sees them (no TPU needed; libtpu installed).

  In a process that runs jax on the CPU only (``JAX_PLATFORMS=cpu``, as ``launch.compile``
  sets), libtpu is told the slice it compiles for instead of asking the TPU VM's metadata
  server (which a CPU machine does not have: libtpu would log errors, then carry on), and
  may load libtpu beside other such processes (libtpu's lock file guards a real TPU, which
  a compile-only process never opens)."""
  import os

  import jax
  from jax.experimental import topologies
  if isinstance(topology, Local):
    return list(jax.devices())
  if os.environ.get("JAX_PLATFORMS") == "cpu":
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kwargs = {"num_slices": topology.num_slices} if topology.num_slices > 1 else {}
  return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.name,
                                           **kwargs).devices)


def devices_per_chip(topology, devs: list) -> int:
  """Devices libtpu gives per chip (1 on v5p / v5e / v6e; 2 for v4's two cores)."""
  return max(1, len(devs) // topology.chips)
