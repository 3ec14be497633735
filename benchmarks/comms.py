"""Collectives of the compiled train step on meshes of 8 to 256 devices, by table size.

    python -m benchmarks.comms --json_out=runs/comms.json          # the full grid (minutes)
    python -m benchmarks.comms --quick                             # 8 devices, < 1 min
    python -m benchmarks.comms --render=runs/comms_grid.json       # the table of a saved run
    python -m benchmarks.comms --devices=8 --layouts=2x4 --rows=1e5,1e7 \
        --config.moment.sv_hist_len=10000 --config.model.gsu.approx=simhash

For every device count one subprocess fakes that many host devices
(``--xla_force_host_platform_device_count``, set before jax is imported). In it, for each
(data x model) layout of that size and each table size, the train step of the config (the
sparse step of ``launch.bench``: ``mcjax.runtime.build(cfg, mesh, init=False)``) is lowered and
compiled from abstract shapes only: the state and the batch are ``jax.ShapeDtypeStruct``s
carrying their shardings (``nnx.eval_shape`` inside ``state.setup``), so nothing is
allocated and a 10^8-row table costs nothing. The per-device HLO text of the compiled step is
then parsed for every all-gather, all-reduce, reduce-scatter, all-to-all and
collective-permute (async ``-start`` forms included), with:

* payload bytes per device per step: the per-device buffer the collective works on (an
  all-reduce's operand, an all-gather's gathered result, a reduce-scatter's full operand, an
  all-to-all's or permute's operand);
* wire bytes per device per step, for a ring / pairwise algorithm over a group of n devices:
  all-reduce 2(n-1)/n x payload, all-gather, reduce-scatter and all-to-all (n-1)/n x
  payload, collective-permute the payload when a device sends to another (0 for self-pairs).

Table size: every table with at least ``model.embedding.large_table_rows`` rows in the config
(the "vocab"-sharded ones: user, live_item, live_author, sv_item, sv_author by default) gets
``--rows`` rows. Batch: ``--batch_per_chip`` examples per device, i.e. a global batch of
batch_per_chip x devices split over "data" (a device of a model group of size m computes the
dense part of batch_per_chip x m examples).

The run fails (one line, exit status 1) when any collective kind's payload at a larger
table exceeds its payload at the smallest table of the same layout by more than 1% + 4 KiB:
communication must not grow with the number of table rows. ``--json_out`` keeps every
collective (kind, shape, group size, bytes, the jax op that produced it) and the compiled
step's cost analysis (FLOPs and bytes accessed per device), which ``benchmarks.projection``
reads.

These are compile-only numbers: fake host devices say what XLA would send, never how fast.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from mcjax import configs


def _define_flags() -> None:
  """Defines the command-line flags: only when run as a script, so that importing this module
  (the tests import several benchmarks into one process) defines none."""
  global _CONFIG, _DEVICES, _LAYOUTS, _ROWS, _BATCH, _QUICK, _JSON_OUT, _WORKER, _RENDER
  _CONFIG = config_flags.DEFINE_config_file(
      "config", configs.path("full"), "A config file (e.g. mcjax/configs/smoke.py).")
  _DEVICES = flags.DEFINE_list("devices", ["8", "32", "64", "256"], "Device counts.")
  _LAYOUTS = flags.DEFINE_list(
      "layouts", ["8x1", "2x4", "32x1", "8x4", "64x1", "16x4", "256x1", "64x4", "32x8",
                  "16x16"], "data x model layouts (each runs in its device count's process).")
  _ROWS = flags.DEFINE_list("rows", ["1e5", "1e6", "1e7", "1e8"], "Table sizes (rows).")
  _BATCH = flags.DEFINE_integer("batch_per_chip", 1024, "Examples per device per step.")
  _QUICK = flags.DEFINE_bool("quick", False, "8 devices, layout 2x4, rows 1e5 and 1e6, a tiny "
                             "model, 16 examples per chip: the smoke test (< 1 min).")
  _JSON_OUT = flags.DEFINE_string("json_out", None, "Write every collective here (JSON).")
  _WORKER = flags.DEFINE_integer("worker", 0, "Internal: compile for this many host devices "
                                 "and print JSON records.")
  _RENDER = flags.DEFINE_string("render", None, "Print the table of a --json_out file "
                                "instead of compiling.")

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(KINDS) + r")(-start)?\((.*)$")
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_GROWTH_TOLERANCE = (0.01, 4096)  # relative, absolute bytes


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


def growth_failures(records: list[dict]) -> list[str]:
  """Collective kinds whose payload grows with the table rows, per layout (see module doc)."""
  failures = []
  layouts = sorted({r["layout"] for r in records})
  rel, abs_ = _GROWTH_TOLERANCE
  for layout in layouts:
    rs = sorted((r for r in records if r["layout"] == layout), key=lambda r: r["rows"])
    base = rs[0]
    for r in rs[1:]:
      for kind in KINDS:
        a = base["summary"]["by_kind"][kind]["payload_bytes"]
        b = r["summary"]["by_kind"][kind]["payload_bytes"]
        if b > a * (1 + rel) + abs_:
          failures.append(f"{kind} on {layout}: {a / 1e6:.3f} MB at {base['rows']:.0e} rows "
                          f"-> {b / 1e6:.3f} MB at {r['rows']:.0e}")
  return failures


def table_bytes_per_device(cfg, data: int, model: int) -> int:
  """Embedding tables plus their row-optimizer state held by one device: "vocab" tables
  split over "model" (rows / model each), the others whole."""
  del data
  total = 0
  emb = cfg.model.embedding
  for rows in emb.vocab.values():
    shards = model if rows >= emb.large_table_rows else 1
    total += -(-rows // shards) * (emb.dim + 1) * 4  # rows x dim fp32 + adagrad accumulator
  return total


# --- the worker: one process per device count ---------------------------------------------


def _configure(cfg, rows: int):
  """A copy of cfg whose large tables have ``rows`` rows."""
  cfg = cfg.copy_and_resolve_references()
  emb = cfg.model.embedding
  for t in list(emb.vocab):
    if emb.vocab[t] >= emb.large_table_rows:
      emb.vocab[t] = rows
  return cfg


def compile_step(cfg, layout: tuple[int, int], batch_per_chip: int, fast: bool = False):
  """(compiled train step, seconds) of cfg on the first data x model devices, abstract."""
  import jax

  from benchmarks import step_bench
  from mcjax import runtime
  from mcjax.runtime import mesh as mesh_lib
  from mcjax.runtime import state as state_lib

  start = time.perf_counter()
  n = layout[0] * layout[1]
  mesh = mesh_lib.make_mesh(layout, jax.devices()[:n])
  rt = runtime.build(cfg, mesh, init=False, check_replicated=False)  # abstract: nothing held
  state, train_step = rt.state, rt.train_step
  # field shapes and dtypes of one example as the step takes them, batch axis widened
  one = step_bench.synthetic_batch(1, int(cfg.moment.sv_hist_len), int(cfg.moment.lv_hist_len))
  sharding = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((batch_per_chip * n,) + v.shape[1:], v.dtype,
                                   sharding=sharding) for k, v in one.items()}
  # fast: cheaper CPU code generation; the partitioned HLO and its collectives are the same
  options = ({**state_lib.INIT_COMPILER_OPTIONS.get("cpu", {}),
              "xla_cpu_use_fusion_emitters": False} if fast else None)
  compiled = train_step.lower(state, batch).compile(compiler_options=options)
  return compiled, time.perf_counter() - start


def _cost(compiled) -> dict:
  """XLA's cost analysis (FLOPs, bytes accessed) and memory analysis (argument, output and
  temporary buffer bytes) of the compiled per-device program; -1 where unavailable."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  analysis = analysis or {}
  out = {"flops": float(analysis.get("flops", -1)),
         "bytes_accessed": float(analysis.get("bytes accessed", -1))}
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not on every backend
    mem = None
  for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes"):
    out[key] = float(getattr(mem, key, -1)) if mem is not None else -1.0
  return out


def worker(num_devices: int, cfg, layouts, rows_list, batch_per_chip: int, fast: bool):
  """Prints one JSON line per (layout, rows) compiled on ``num_devices`` host devices."""
  import jax
  if len(jax.devices()) != num_devices:
    raise SystemExit(f"comms: expected {num_devices} host devices, got {len(jax.devices())}"
                     " (XLA_FLAGS must be set before jax is imported)")
  for layout in layouts:
    for rows in rows_list:
      c = _configure(cfg, rows)
      compiled, seconds = compile_step(c, layout, batch_per_chip, fast=fast)
      collectives = parse_collectives(compiled.as_text(), num_devices)
      record = {"devices": num_devices, "layout": f"{layout[0]}x{layout[1]}",
                "data": layout[0], "model": layout[1], "rows": rows,
                "batch_per_chip": batch_per_chip, "global_batch": batch_per_chip * num_devices,
                "sv_hist_len": int(c.moment.sv_hist_len),
                "lv_hist_len": int(c.moment.lv_hist_len),
                "gsu_approx": str(c.model.gsu.approx), "compile_s": seconds,
                "cost": _cost(compiled),
                "table_bytes_per_device": table_bytes_per_device(c, *layout),
                "summary": summarize(collectives), "collectives": collectives}
      print("RECORD " + json.dumps(record), flush=True)


# --- the driver ----------------------------------------------------------------------------


def _layouts(values) -> list[tuple[int, int]]:
  out = []
  for v in values:
    d, m = (int(x) for x in v.lower().split("x"))
    out.append((d, m))
  return out


def _mb(x: float) -> str:
  return f"{x / 1e6:,.2f}"


def _op_kinds(op_name: str) -> str:
  """The distinct jax primitives named in a collective's op_name metadata (a combined
  collective joins its parts' names with ':'), e.g. 'scatter-add, dot_general'."""
  kinds = []
  for part in re.split(r"[:()]", op_name):
    leaf = part.rsplit("/", 1)[-1].strip()
    if (re.fullmatch(r"[a-z][a-z_-]*", leaf) and leaf not in kinds and leaf != "train_step"
        and not leaf.startswith(("jit", "jvp", "transpose", "cond", "branch"))):
      kinds.append(leaf)
  return ", ".join(kinds[:4]) + (", ..." if len(kinds) > 4 else "")


def _short_type(c: dict) -> str:
  """'f32[512,64,32]', or the biggest array of a tuple and how many more it holds."""
  more = c["arrays"] - 1
  return c["biggest_arrays"][0] + (f" + {more} more" if more > 0 else "")


def markdown(records: list[dict]) -> str:
  """The communication table: payload MB per device per step by kind, wire MB, largest."""
  lines = ["| mesh (data x model) | table rows | " + " | ".join(KINDS) +
           " | payload MB total | wire MB total | largest collective (MB, from) |",
           "|---|---|" + "---|" * (len(KINDS) + 3)]
  for r in records:
    s = r["summary"]
    big = s["largest"]
    where = _op_kinds(big["op"]) if big else "-"
    lines.append(
        f"| {r['layout']} | {r['rows']:.0e} | " +
        " | ".join(_mb(s["by_kind"][k]["payload_bytes"]) for k in KINDS) +
        f" | {_mb(s['payload_bytes'])} | {_mb(s['wire_bytes'])} | " +
        (f"{_mb(big['payload_bytes'])} {big['kind']} {_short_type(big)} "
         f"({where}) |" if big else "- |"))
  return "\n".join(lines)


def run_device_count(n: int, argv: list[str]) -> list[dict]:
  """Runs this module as a worker on n fake host devices; returns its records."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  proc = subprocess.run([sys.executable, "-m", "benchmarks.comms", f"--worker={n}"] + argv,
                        env=env, capture_output=True, text=True)
  if proc.returncode:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    raise SystemExit(f"comms: the {n}-device worker failed: {tail[0]}")
  return [json.loads(line[len("RECORD "):]) for line in proc.stdout.splitlines()
          if line.startswith("RECORD ")]


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  layouts = _layouts(_LAYOUTS.value)
  rows = [int(float(r)) for r in _ROWS.value]
  batch = _BATCH.value
  devices = [int(d) for d in _DEVICES.value]
  if _QUICK.value:
    from benchmarks import step_bench
    step_bench.shrink_for_quick(cfg)
    devices, layouts, rows, batch = [8], [(2, 4)], [100_000, 1_000_000], 16
  if _RENDER.value:  # the tables of a saved run
    with open(_RENDER.value) as f:
      print(markdown(json.load(f)["records"]))
    return
  if _WORKER.value:
    worker(_WORKER.value, cfg, [l for l in layouts if l[0] * l[1] == _WORKER.value], rows,
           batch, fast=_QUICK.value)
    return
  passthrough = [a for a in sys.argv[1:] if not a.startswith("--json_out")]
  records = []
  for n in devices:
    if not any(d * m == n for d, m in layouts):
      continue
    got = run_device_count(n, passthrough)
    for r in got:
      print(f"{r['layout']:>6} rows {r['rows']:.0e}: payload {_mb(r['summary']['payload_bytes'])}"
            f" MB, wire {_mb(r['summary']['wire_bytes'])} MB per device per step "
            f"(compiled in {r['compile_s']:.0f} s)", flush=True)
    records += got
  print()
  print(markdown(records))
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump({"command": " ".join(["python -m benchmarks.comms"] + sys.argv[1:]),
                 "records": records}, f, indent=1)
  failures = growth_failures(records)
  if failures:
    print(f"comms: FAIL: collective bytes grow with table rows: {'; '.join(failures)}",
          file=sys.stderr)
    sys.exit(1)
  print(f"\ncomms: OK: no collective grows with table rows ({len(records)} compiled steps)")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
