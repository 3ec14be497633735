"""The collectives of a compiled (per-device) HLO text, whichever backend compiled it.

``parse_collectives`` reads every all-gather, all-reduce, reduce-scatter, all-to-all and
collective-permute (async ``-start`` forms included) with:

* payload bytes per device per step: the per-device buffer the collective works on (an
  all-reduce's operand, an all-gather's gathered result, a reduce-scatter's full operand, an
  all-to-all's or permute's operand);
* wire bytes per device per step, for a ring / pairwise algorithm over a group of n devices:
  all-reduce 2(n-1)/n x payload, all-gather, reduce-scatter and all-to-all (n-1)/n x
  payload, collective-permute the payload when a device sends to another (0 for self-pairs);
* the jax op that made it (the ``op_name`` metadata).
"""

from __future__ import annotations

import re

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(KINDS) + r")(-start)?\((.*)$")
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def _arrays(type_str: str) -> list[tuple[str, int]]:
  """(type, bytes) of the arrays in an HLO type string (an array or a tuple)."""
  out = []
  for dtype, dims in _ARRAY.findall(type_str):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    out.append((f"{dtype}[{dims}]", n * _DTYPE_BYTES[dtype]))
  return out


def group_size(attrs: str, num_devices: int) -> int:
  """Devices per replica group of a collective's attribute text (every HLO spelling: explicit
  groups, iota ``[G,N]<=[...]``, or ``mesh[...] {axes}``); all devices when unspecified."""
  m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)
  if m:
    sizes = dict((k.strip("'"), int(v)) for k, v in
                 (kv.split("=") for kv in m.group(1).split(",")))
    n = 1
    for axis in m.group(2).split(","):
      n *= sizes[axis.strip().strip("'")]
    return n
  return num_devices


def parse_collectives(hlo: str, num_devices: int) -> list[dict]:
  """Every collective of a compiled (per-device) HLO text: kind, payload and wire bytes per
  device, group size, result type and the jax op (metadata op_name) it came from."""
  out = []
  for line in hlo.splitlines():
    m = _OP.match(line)
    if not m:
      continue
    type_str, kind, start, rest = m.groups()
    arrays = _arrays(type_str)
    if start and kind in ("all-gather", "collective-permute"):  # (operand, result, ...)
      arrays = [max(arrays, key=lambda a: a[1])] if kind == "all-gather" else arrays[:1]
    payload = sum(b for _, b in arrays)
    op = re.search(r'op_name="([^"]*)"', rest)
    rec = {"kind": kind, "type": type_str[:160], "payload_bytes": payload,
           "op": op.group(1) if op else "", "arrays": len(arrays),
           "biggest_arrays": [t for t, _ in sorted(arrays, key=lambda a: -a[1])[:3]]}
    if kind == "collective-permute":
      pairs = re.findall(r"\{(\d+),(\d+)\}", rest.split("source_target_pairs=")[-1]
                         .split("}}")[0] + "}")
      moves = any(a != b for a, b in pairs)
      rec.update(group=2, wire_bytes=payload if moves else 0)
    else:
      n = group_size(rest, num_devices)
      factor = 2 * (n - 1) / n if kind == "all-reduce" else (n - 1) / n
      rec.update(group=n, wire_bytes=int(factor * payload))
    out.append(rec)
  return out


def summarize(collectives: list[dict]) -> dict:
  """Per-kind payload / wire bytes and counts, totals, and the largest collective."""
  by_kind = {k: {"count": 0, "payload_bytes": 0, "wire_bytes": 0} for k in KINDS}
  for c in collectives:
    s = by_kind[c["kind"]]
    s["count"] += 1
    s["payload_bytes"] += c["payload_bytes"]
    s["wire_bytes"] += c["wire_bytes"]
  largest = max(collectives, key=lambda c: c["payload_bytes"], default=None)
  return {"by_kind": by_kind,
          "payload_bytes": sum(s["payload_bytes"] for s in by_kind.values()),
          "wire_bytes": sum(s["wire_bytes"] for s in by_kind.values()),
          "largest": largest}


def op_kinds(op_name: str) -> str:
  """The distinct jax primitives named in a collective's op_name metadata (a combined
  collective joins its parts' names with ':'), e.g. 'scatter-add, dot_general'."""
  kinds = []
  for part in re.split(r"[:()]", op_name):
    leaf = part.rsplit("/", 1)[-1].strip()
    if (re.fullmatch(r"[a-z][a-z_-]*", leaf) and leaf not in kinds and leaf != "train_step"
        and not leaf.startswith(("jit", "jvp", "transpose", "cond", "branch"))):
      kinds.append(leaf)
  return ", ".join(kinds[:4]) + (", ..." if len(kinds) > 4 else "")
