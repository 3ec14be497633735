"""Per-chip step-time bounds of the train step on 8 to 256 accelerators, from compiled costs.

    python -m benchmarks.comms --json_out=runs/comms_grid.json     # compile the grid first
    python -m benchmarks.projection --comms_json=runs/comms_grid.json [--json_out=...]

For each compiled step of a ``benchmarks.comms`` run (mesh, table size, per-chip batch) and
each chip in ``CHIPS`` three lower bounds on the step time of one chip:

* compute: XLA's FLOPs of the per-device program / the chip's dense matmul peak in the
  precision the float32 step's dots run in at JAX's DEFAULT precision (TF32 tensor cores on
  NVIDIA, one bf16 pass on TPU; docs.jax.dev/en/latest/201/precision.html). Every FLOP is
  counted at the matmul peak, so this bound is optimistic; most of the step is not matmul.
* memory: bytes accessed (XLA cost analysis) / HBM bandwidth. XLA counts a gather or
  scatter as reading its whole operand, so the bytes grow with the table while the real
  traffic does not; the bound uses the bytes of the same layout at its smallest table
  (10^5 rows: a 12.8 MB table per large feature), stated in the table.
* communication: the collectives' wire bytes per device (ring algorithms, see
  ``benchmarks.comms``) / the per-direction link bandwidth (a device sends and receives its
  wire bytes at once).

The step-time bound is the largest term (perfect overlap); their sum is the no-overlap
figure. Weak scaling: at a fixed per-chip batch the ideal step time is flat, so the
efficiency of N chips is bound(base) / bound(N), the base being the smallest mesh of the grid
(8 devices) with the same model-axis size, or else the fastest smallest mesh.

These are bounds from compiled programs and data-sheet peaks, not measurements: no
accelerator was used. Peaks (per chip): NVIDIA H200 SXM (nvidia.com/en-us/data-center/h200):
989 TFLOP/s dense bf16, 494 dense TF32 (989 with sparsity), 67 fp32, 4.8 TB/s HBM3e, 141 GB,
NVLink 900 GB/s bidirectional (450 GB/s each way) inside an 8-GPU NVLink domain; Google TPU
v5p (cloud.google.com/tpu/docs/v5p): 459 TFLOP/s bf16, 2,765 GB/s HBM, 95 GB, inter-chip
interconnect 4,800 Gbps per chip (600 GB/s; taken here as both directions together, 300
GB/s each way, like NVLink's figure); TPU v5e (cloud.google.com/tpu/docs/v5e): 197 TFLOP/s
bf16, 819 GB/s HBM, 16 GB, 1,600 Gbps ICI per chip (100 GB/s each way).

Programs compiled by the TPU compiler (``benchmarks.comms --tpu=v5p``) are projected onto
their own chip only; XLA:CPU-compiled ones onto H200 and TPU v5p (``CPU_PROJECTED``).
"""

from __future__ import annotations

import json
import sys
import statistics

from absl import app, flags

def _define_flags() -> None:
  """Defines the command-line flags: only when run as a script, so that importing this module
  (the tests import several benchmarks into one process) defines none."""
  global _COMMS_JSON, _JSON_OUT
  _COMMS_JSON = flags.DEFINE_list("comms_json", ["runs/comms_grid.json"],
                                  "The JSON(s) written by benchmarks.comms --json_out (one "
                                  "variant: their records are projected together).")
  _JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the projection here (JSON).")

CHIPS = {
    "H200": {"flops": 494e12, "flops_note": "TF32 dense 494 TFLOP/s", "bf16_flops": 989e12,
             "fp32_flops": 67e12, "hbm_bytes_per_s": 4.8e12, "hbm_bytes": 141e9,
             "link_bytes_per_s": 450e9, "link_note": "NVLink 900 GB/s bidirectional"},
    "TPU v5p": {"flops": 459e12, "flops_note": "bf16 459 TFLOP/s (one pass)",
                "bf16_flops": 459e12, "hbm_bytes_per_s": 2765e9, "hbm_bytes": 95e9,
                "link_bytes_per_s": 300e9, "link_note": "ICI 4,800 Gbps per chip"},
    "TPU v5e": {"flops": 197e12, "flops_note": "bf16 197 TFLOP/s (one pass)",
                "bf16_flops": 197e12, "hbm_bytes_per_s": 819e9, "hbm_bytes": 16e9,
                "link_bytes_per_s": 100e9, "link_note": "ICI 1,600 Gbps per chip"},
}
# The chips a record is projected onto: a TPU-compiled record (benchmarks.comms --tpu) onto
# its own chip only; an XLA:CPU-compiled one onto these.
CPU_PROJECTED = ("H200", "TPU v5p")
_TPU_CHIP = {"v5p": "TPU v5p", "v5e": "TPU v5e"}


def chips_of(record: dict) -> tuple[str, ...]:
  """The CHIPS a record is projected onto (see CPU_PROJECTED)."""
  platform = record.get("platform", "cpu")
  if platform == "cpu":
    return CPU_PROJECTED
  if platform not in _TPU_CHIP:
    raise ValueError(f"projection: no peaks for TPU chip {platform!r} (known: "
                     f"{', '.join(_TPU_CHIP)})")
  return (_TPU_CHIP[platform],)


def bounds(record: dict, chip: dict, hbm_bytes_accessed: float) -> dict:
  """Compute, memory and communication times (s) of one compiled step on one chip."""
  terms = {"compute_s": record["cost"]["flops"] / chip["flops"],
           "memory_s": hbm_bytes_accessed / chip["hbm_bytes_per_s"],
           "comm_s": record["summary"]["wire_bytes"] / chip["link_bytes_per_s"]}
  dominant = max(terms, key=terms.get)
  memory = record["cost"].get("argument_size_in_bytes", -1) + max(
      0.0, record["cost"].get("temp_size_in_bytes", -1))
  return {**terms, "bound_s": terms[dominant], "no_overlap_s": sum(terms.values()),
          "dominant": dominant.removesuffix("_s"),
          "device_bytes": memory, "fits": 0 < memory <= chip["hbm_bytes"]}


def variant(command: str) -> str:
  """What a benchmarks.comms command compiled, less where: its flags but the device counts,
  layouts, table sizes and output file."""
  where = ("--devices=", "--layouts=", "--rows=", "--json_out=")
  return " ".join(sorted(a for a in command.split() if a.startswith("--")
                         and not a.startswith(where)))


def project(records: list[dict]) -> list[dict]:
  """One row per (chip, record) with the bounds and the weak-scaling efficiency."""
  smallest_bytes = {}
  for r in sorted(records, key=lambda r: r["rows"]):
    smallest_bytes.setdefault((r.get("platform"), r["layout"]),
                              (r["rows"], r["cost"]["bytes_accessed"]))
  rows = []
  for name, chip in CHIPS.items():
    for r in (r for r in records if name in chips_of(r)):
      base_rows, hbm = smallest_bytes[(r.get("platform"), r["layout"])]
      rows.append({"chip": name, "layout": r["layout"], "devices": r["devices"],
                   "data": r["data"], "model": r["model"], "rows": r["rows"],
                   "batch_per_chip": r["batch_per_chip"], "hbm_bytes_from_rows": base_rows,
                   "flops": r["cost"]["flops"], "hbm_bytes_accessed": hbm,
                   "wire_bytes": r["summary"]["wire_bytes"],
                   **bounds(r, chip, hbm)})
  for row in rows:  # weak scaling, per (chip, table size)
    peers = [x for x in rows if (x["chip"], x["rows"]) == (row["chip"], row["rows"])]
    fewest = min(x["devices"] for x in peers)
    smallest = [x for x in peers if x["devices"] == fewest]
    same_model = [x for x in smallest if x["model"] == row["model"]]
    base = (same_model or sorted(smallest, key=lambda x: x["bound_s"]))[0]
    row["weak_scaling_base"] = base["layout"]
    row["weak_scaling_efficiency"] = base["bound_s"] / row["bound_s"]
  return rows


def markdown(rows: list[dict], table_rows: int) -> str:
  """The projection table at one table size, one line per (chip, mesh)."""
  out = ["| chip | mesh (data x model) | GFLOP / device | HBM GB accessed | wire MB | "
         "compute ms | memory ms | comm ms | bound ms (max) | no overlap ms | dominant | "
         "weak-scaling efficiency (vs) | device GB (args + temp) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["rows"] != table_rows:
      continue
    out.append(
        f"| {r['chip']} | {r['layout']} | {r['flops'] / 1e9:,.1f} | "
        f"{r['hbm_bytes_accessed'] / 1e9:,.2f} | {r['wire_bytes'] / 1e6:,.1f} | "
        f"{1e3 * r['compute_s']:.3f} | {1e3 * r['memory_s']:.2f} | {1e3 * r['comm_s']:.2f} | "
        f"{1e3 * r['bound_s']:.2f} | {1e3 * r['no_overlap_s']:.2f} | {r['dominant']} | "
        f"{r['weak_scaling_efficiency']:.0%} ({r['weak_scaling_base']}) | "
        f"{r['device_bytes'] / 1e9:,.1f}{'' if r['fits'] else ' (does not fit)'} |")
  return "\n".join(out)


def capacity_markdown(records: list[dict]) -> str:
  """Device memory of each compiled step (XLA's argument + temporary bytes per device: the
  state shards, the batch shard and the step's buffers) by mesh and table size, against each
  chip's HBM."""
  sizes = sorted({r["rows"] for r in records})
  out = ["| mesh | " + " | ".join(f"GB at {t:.0e} rows" for t in sizes) + " |",
         "|---|" + "---|" * len(sizes)]
  for layout in dict.fromkeys(r["layout"] for r in records):
    cells = []
    for t in sizes:
      r = next((x for x in records if x["layout"] == layout and x["rows"] == t), None)
      if r is None:
        cells.append("-")
        continue
      gb = (r["cost"]["argument_size_in_bytes"] + r["cost"]["temp_size_in_bytes"]) / 1e9
      over = [name for name, c in CHIPS.items() if gb * 1e9 > c["hbm_bytes"]]
      cells.append(f"{gb:,.1f}" + (f" (> {', '.join(over)})" if over else ""))
    out.append(f"| {layout} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data = {"records": [], "commands": []}
  variants = {}
  for path in _COMMS_JSON.value:
    with open(path) as f:
      got = json.load(f)
    data["records"] += got["records"]
    data["commands"].append(got.get("command", path))
    variants.setdefault(variant(got.get("command", "")), path)
  if len(variants) > 1:
    (a, pa), (b, pb) = list(variants.items())[:2]
    sys.exit(f"projection: --comms_json: {pa} and {pb} are different variants ({a or 'defaults'}"
             f" vs {b or 'defaults'}); project each variant on its own")
  rows = project(data["records"])
  print("from: " + "\n      ".join(data["commands"]) + "\n")
  smallest = min(r["rows"] for r in rows)
  print(f"table rows {smallest:.0e} (the terms do not depend on the table size: see the "
        "module doc):\n")
  print(markdown(rows, smallest))
  print("\ndevice memory (args + temp) by table size:\n")
  print(capacity_markdown(data["records"]))
  print()
  for chip in dict.fromkeys(r["chip"] for r in rows):
    eff = [r["weak_scaling_efficiency"] for r in rows if r["chip"] == chip]
    print(f"{chip}: weak-scaling efficiency median {statistics.median(eff):.0%}, "
          f"min {min(eff):.0%}")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump({"chips": CHIPS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
