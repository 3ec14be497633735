"""What a compiled step needs per device: HBM (memory analysis), collectives, FLOPs.

``memory`` reads XLA's memory analysis of the compiled per-device program: arguments (the
train state's shards and the batch's), outputs, temporaries, and the bytes where an output
reuses a donated argument (the train step donates its state), so the total a device holds at
the step's peak is arguments + outputs - aliased + temporaries. ``largest_arguments`` names
the biggest per-device shards of the abstract arguments, for the one-line refusal of a
configuration that does not fit.
"""

from __future__ import annotations

import jax
from jax.tree_util import keystr

from mcjax.aot import hlo

_MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes")


def memory(compiled) -> dict:
  """Per-device bytes: arguments, outputs, aliased, temporaries, code, total (see module)."""
  analysis = compiled.memory_analysis()
  out = {k.removesuffix("_size_in_bytes"): int(getattr(analysis, k, 0) or 0)
         for k in _MEMORY_FIELDS}
  out["total"] = (out["argument"] + out["output"] - out["alias"] + out["temp"]
                  + out["generated_code"])
  return out


def flops(compiled) -> float:
  """FLOPs per device per call from XLA's cost analysis (-1 when it gives none)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", -1))


def shard_bytes(x) -> int:
  """Bytes one device holds of an abstract array (a ``ShapeDtypeStruct`` with a sharding)."""
  shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
  n = 1
  for d in shape:
    n *= d
  return n * x.dtype.itemsize


def argument_bytes(*trees) -> int:
  """Per-device bytes of abstract arguments."""
  return sum(shard_bytes(x) for t in trees for x in jax.tree.leaves(t))


def largest_arguments(tree, n: int = 3) -> list[tuple[str, int]]:
  """(path, per-device bytes) of the ``n`` largest leaves of an abstract argument tree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  sized = sorted(((keystr(path, simple=True, separator="/"), shard_bytes(x))
                  for path, x in leaves), key=lambda kv: -kv[1])
  return sized[:n]


def gb(x: float) -> str:
  return f"{x / 1e9:,.2f} GB"


def memory_table(rows: dict, hbm: float) -> str:
  """A markdown table: step -> per-device arguments, outputs, aliased, temporaries, total,
  and the share of the device's HBM ``hbm``."""
  lines = ["| step | arguments | outputs | aliased (donated) | temporaries | total | "
           "of HBM |", "|---|---|---|---|---|---|---|"]
  for name, m in rows.items():
    lines.append(f"| {name} | {gb(m['argument'])} | {gb(m['output'])} | {gb(m['alias'])} | "
                 f"{gb(m['temp'])} | {gb(m['total'])} | {100 * m['total'] / hbm:.1f}% |")
  return "\n".join(lines)


def collectives_table(collectives: list[dict], top: int = 12) -> str:
  """A markdown table of the collectives grouped by (kind, largest array, jax op), largest
  payload first, ``top`` rows and a line for the rest."""
  groups: dict[tuple, dict] = {}
  for c in collectives:
    key = (c["kind"], c["biggest_arrays"][0] if c["biggest_arrays"] else "",
           hlo.op_kinds(c["op"]) or "-")
    g = groups.setdefault(key, {"count": 0, "payload": 0, "wire": 0, "group": c["group"]})
    g["count"] += 1
    g["payload"] += c["payload_bytes"]
    g["wire"] += c["wire_bytes"]
  ordered = sorted(groups.items(), key=lambda kv: -kv[1]["payload"])
  lines = ["| kind | count | largest array | group | payload MB | wire MB | jax op |",
           "|---|---|---|---|---|---|---|"]
  for (kind, array, op), g in ordered[:top]:
    lines.append(f"| {kind} | {g['count']} | {array} | {g['group']} | "
                 f"{g['payload'] / 1e6:,.2f} | {g['wire'] / 1e6:,.2f} | {op} |")
  rest = ordered[top:]
  if rest:
    lines.append(f"| ({len(rest)} more) | {sum(g['count'] for _, g in rest)} | | | "
                 f"{sum(g['payload'] for _, g in rest) / 1e6:,.2f} | "
                 f"{sum(g['wire'] for _, g in rest) / 1e6:,.2f} | |")
  s = hlo.summarize(collectives)
  lines.append(f"| total | {len(collectives)} | | | {s['payload_bytes'] / 1e6:,.2f} | "
               f"{s['wire_bytes'] / 1e6:,.2f} | |")
  return "\n".join(lines)


def too_big_line(step: str, total: float | None, hbm: float,
                 largest: list[tuple[str, int]], temp: float | None = None) -> str:
  """The one-line refusal: what does not fit, and the largest buffers (``total`` None: the
  compiler itself ran out of HBM)."""
  bufs = ", ".join(f"{path} {gb(b)}" for path, b in largest)
  temps = f", temporaries {gb(temp)}" if temp is not None else ""
  needs = (f"needs {gb(total)} per chip, over" if total is not None
           else "ran the compiler out of")
  return (f"compile: the {step} step {needs} the chip's {gb(hbm)} HBM; largest buffers "
          f"per chip: {bufs}{temps}")
