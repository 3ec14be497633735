"""``launch.compile``'s work: a config's steps compiled for a TPU slice, and their report.

``run`` builds the mesh over the slice's devices (``topology``), the steps from abstract
shapes (``steps``), refuses a configuration whose per-chip arguments alone exceed the chip's
HBM (before the minutes of compiling), compiles, and prints the per-chip memory table, the
train step's collectives, FLOPs and compile times; ``DoesNotFit`` (one line) when a compiled
step needs more than the HBM or the compiler runs out of it.
"""

from __future__ import annotations

import ml_collections

from mcjax.aot import executable, hlo, report
from mcjax.aot import steps as aot_steps
from mcjax.aot import topology as topo
from mcjax.runtime import mesh as mesh_lib


class DoesNotFit(Exception):
  """A step needs more HBM per chip than the chip has (the message is one line)."""


def _out_of_memory(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def build(cfg: ml_collections.ConfigDict, topology: str, layout: tuple[int, int],
          batch_per_chip: int, num_slices: int = 1):
  """(Topology, devices per chip, HBM bytes per device, mesh shape, ``AbstractSteps``) of
  cfg on a slice: the one place this package builds the steps (``aot_steps``)."""
  t = topo.parse(topology, num_slices)
  devs = topo.devices(t)
  per_chip = topo.devices_per_chip(t, devs)
  if batch_per_chip % per_chip:
    raise ValueError(f"--batch_per_chip={batch_per_chip}: must split over the {per_chip} "
                     "devices of a chip")
  try:
    mesh_shape = mesh_lib.resolve_shape(layout, len(devs))
  except ValueError as e:
    raise ValueError(f"--layout={layout[0]}x{layout[1]}: {e}") from None
  mesh = mesh_lib.make_mesh(mesh_shape, devs)
  built = aot_steps.abstract_steps(cfg, mesh, batch_per_chip // per_chip)
  return t, per_chip, t.hbm_bytes / per_chip, mesh_shape, built


def argument_bytes(cfg: ml_collections.ConfigDict, topology: str, layout: tuple[int, int],
                   batch_per_chip: int) -> int:
  """Per-device bytes of the train step's arguments (state and batch), without compiling."""
  built = build(cfg, topology, layout, batch_per_chip)[-1]
  return report.argument_bytes(built.state, built.batch)


def run(cfg: ml_collections.ConfigDict, topology: str, layout: tuple[int, int],
        batch_per_chip: int, *, num_slices: int = 1, steps=("train", "eval", "score"),
        save: str | None = None, out=print) -> dict:
  """Compiles ``steps`` of cfg for ``topology`` (see module doc); returns the numbers."""
  unknown = [s for s in steps if s not in aot_steps.STEPS]
  if unknown or not steps:
    raise ValueError(f"--steps={','.join(steps)}: give some of {', '.join(aot_steps.STEPS)}")
  t, per_chip, hbm, mesh_shape, built = build(cfg, topology, layout, batch_per_chip,
                                              num_slices)
  out(f"{cfg.get('name', 'config')} on {t.describe()}, mesh {mesh_shape[0]} data x "
      f"{mesh_shape[1]} model, {batch_per_chip} examples per chip "
      f"(global batch {batch_per_chip * t.chips})")
  args = report.argument_bytes(built.state, built.batch)
  largest = report.largest_arguments({"state": built.state, "batch": built.batch})
  if args > hbm:
    raise DoesNotFit(report.too_big_line("train", args, hbm, largest) + " (arguments alone)")
  result = {"topology": t.name, "num_slices": num_slices, "chips": t.chips,
            "devices": mesh_shape[0] * mesh_shape[1], "hbm_per_device": hbm,
            "layout": list(mesh_shape),
            "batch_per_chip": batch_per_chip, "steps": {}}
  compiled = {}
  for name in steps:
    try:
      (c, seconds), = aot_steps.compile_steps(built, (name,)).values()
    except Exception as e:  # pylint: disable=broad-except  # the TPU compiler's own refusal
      if not _out_of_memory(e):
        raise
      raise DoesNotFit(report.too_big_line(name, None, hbm, largest)) from None
    collectives = hlo.parse_collectives(c.as_text(), result["devices"])
    compiled[name] = c
    result["steps"][name] = {"memory": report.memory(c), "flops": report.flops(c),
                             "compile_s": seconds, "collectives": collectives,
                             "summary": hlo.summarize(collectives)}
  mem = {name: r["memory"] for name, r in result["steps"].items()}
  out("\nPer-chip HBM" + (f" (per device: {per_chip} per chip)" if per_chip > 1 else "")
      + f", of {report.gb(hbm)}:\n" + report.memory_table(mem, hbm))
  for name, r in result["steps"].items():
    s = r["summary"]
    out(f"\n{name} step: {r['flops'] / 1e9:,.2f} GFLOP per chip, collectives "
        f"{s['payload_bytes'] / 1e6:,.2f} MB payload / {s['wire_bytes'] / 1e6:,.2f} MB wire "
        f"per chip, compiled in {r['compile_s']:.0f} s")
  if "train" in result["steps"]:
    out("\nCollectives of the train step, per chip per step:\n"
        + report.collectives_table(result["steps"]["train"]["collectives"]))
  if save:
    executable.save(save, compiled)
    out(f"\nsaved the compiled {', '.join(compiled)} step(s) to {save}")
  for name, m in mem.items():
    if m["total"] > hbm:
      raise DoesNotFit(report.too_big_line(name, m["total"], hbm, largest, m["temp"]))
  return result
