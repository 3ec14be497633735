"""What fits a TPU chip: the largest tables and the longest short-video history of the train
step at a per-chip batch, from the TPU compiler's memory analysis (no TPU needed).

    # tables: the fixed part per chip from TPU-compiled benchmarks.comms records (same config
    # and overrides), the bytes per table row from the abstract state; --verify compiles at
    # the predicted limit
    python -m benchmarks.tpu_capacity --mode=tables --comms_json=runs/tpu/block_8.json \
        --config.mesh.embedding_exchange=all_to_all --config.loss.contrastive_block=1024
    # history: compiles at two short-video history lengths, fits the line, --verify compiles
    # at the predicted limit of each chip
    python -m benchmarks.tpu_capacity --mode=history --topology=v5p-16 --hist_lens=1000,4000 \
        --config.model.gsu.approx=simhash --config.mesh.embedding_exchange=all_to_all

Per-chip memory is the compiled train step's arguments + outputs - donated (aliased) +
temporaries (``mcjax.aot.report.memory``). Tables: the state grows linearly with the rows of
the large tables (every table of at least ``model.embedding.large_table_rows`` rows gets the
same row count, as in ``benchmarks.comms``; their row-optimizer state included), and the
step's temporaries do not grow with them (the sparse update touches the batch's rows), so the
largest row count is the one where the arguments fill the HBM the compiled step leaves.
``model.embedding.vocab`` is capped below 2^30 rows per table (int32 row indices), which
binds before the memory on large slices: the table gives both. History: arguments (the
batch's history fields) and temporaries both grow with the history length; two compiles give
the line.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mcjax import configs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/smoke.py).")
_MODE = flags.DEFINE_enum("mode", "tables", ["tables", "history"], "What to size.")
_COMMS_JSON = flags.DEFINE_list("comms_json", [], "tables: benchmarks.comms --tpu JSON files.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-16", "history: the slice compiled.")
_HIST_LENS = flags.DEFINE_list("hist_lens", ["1000", "4000"], "history: lengths compiled.")
_CHIPS = flags.DEFINE_list("chips", ["v5p", "v5e"], "history: chips to predict for.")
_BATCH = flags.DEFINE_integer("batch_per_chip", 1024, "Examples per chip per step.")
_VERIFY = flags.DEFINE_bool("verify", False, "Compile at each predicted limit (history: and "
                            "bisect where it does not fit).")
_ROWS = flags.DEFINE_integer("rows", 131072, "history: rows of every large table (0: the "
                             "config's; they must split over the chips).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the numbers here (JSON).")

ROW_CAP = 2**30  # model.embedding.vocab is refused at or above this (int32 row indices)


def _total(cost: dict) -> float:
  """Per-device bytes of a comms record's cost (see mcjax.aot.report.memory)."""
  return (cost["argument_size_in_bytes"] + cost["output_size_in_bytes"]
          - cost["alias_size_in_bytes"] + cost["temp_size_in_bytes"])


def _with(cfg, **dotted):
  cfg = cfg.copy_and_resolve_references()
  for key, value in dotted.items():
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return cfg


def tables(cfg, records: list[dict], batch: int, verify: bool) -> list[dict]:
  """One row per (record, table dtype): the largest rows per large table that fit."""
  from benchmarks import comms
  from mcjax.aot import compile_report
  from mcjax.aot import topology as topo
  rows_out = []
  for r in records:
    t = topo.for_chips(r["platform"], r["devices"])
    layout = (r["data"], r["model"])
    r0 = int(r["rows"])
    fixed = _total(r["cost"])
    base32 = compile_report.argument_bytes(comms._configure(cfg, r0), t.accelerator_type,
                                           layout, batch)
    for dtype in ("float32", "bfloat16"):
      c = _with(cfg, **{"model.embedding.table_dtype": dtype})
      a0 = compile_report.argument_bytes(comms._configure(c, r0), t.accelerator_type, layout,
                                         batch)
      a1 = compile_report.argument_bytes(comms._configure(c, r0 * 1024), t.accelerator_type,
                                         layout, batch)
      per_row = (a1 - a0) / (r0 * 1024 - r0)  # bytes per chip per row of every large table
      total0 = fixed - base32 + a0  # the compiled fp32 step, its tables in this dtype
      n = r["devices"]
      limit = int(r0 + (t.hbm_bytes - total0) / per_row) // n * n
      cap = (ROW_CAP - 1) // n * n
      row = {"topology": t.accelerator_type, "chips": t.chips, "layout": r["layout"],
             "table_dtype": dtype, "fixed_gb": (total0 - a0) / 1e9,
             "bytes_per_row_per_chip": per_row, "rows_memory_limit": limit,
             "rows_limit": min(limit, cap), "capped": cap < limit,
             "large_tables": sum(1 for v in c.model.embedding.vocab.values()
                                 if v >= c.model.embedding.large_table_rows)}
      if verify:
        rows = int(0.98 * row["rows_limit"]) // n * n
        res = compile_report.run(comms._configure(c, rows), t.accelerator_type, layout, batch,
                                 steps=("train",), out=lambda *_: None)
        row["verified"] = {"rows": rows, "total_gb": res["steps"]["train"]["memory"]["total"]
                           / 1e9}
      rows_out.append(row)
      print(json.dumps(row), flush=True)
  return rows_out


def _history_total(cfg, length: int, topology: str, batch: int) -> float | None:
  """Per-chip bytes of the train step at short-video history ``length`` (None: it does not
  fit the chip: refused on its arguments or by the TPU compiler)."""
  from mcjax.aot import compile_report
  try:
    res = compile_report.run(_with(cfg, **{"moment.sv_hist_len": length}), topology, (-1, 1),
                             batch, steps=("train",), out=lambda *_: None)
  except compile_report.DoesNotFit:
    return None
  total = res["steps"]["train"]["memory"]["total"]
  return total if total <= res["hbm_per_device"] else None


def history(cfg, topology: str, lens: list[int], chips: list[str], batch: int,
            verify: bool, steps: int = 4) -> list[dict]:
  """The line total(L) from compiles at ``lens``; the longest L per chip's HBM by the line,
  and with ``verify`` by compiling: at 98% of the line's limit, then, where that does not
  fit, bisecting (geometrically, ``steps`` compiles) between the longest length that fit and
  the shortest that did not."""
  from mcjax.aot import topology as topo
  t = topo.parse(topology)
  points = []
  for length in lens:
    total = _history_total(cfg, length, topology, batch)
    if total is None:
      raise SystemExit(f"tpu_capacity: --hist_lens={length} does not fit {topology}")
    points.append((length, total))
    print(json.dumps({"topology": t.accelerator_type, "sv_hist_len": length,
                      "total_gb": total / 1e9}), flush=True)
  (l0, m0), (l1, m1) = points[0], points[-1]
  slope = (m1 - m0) / (l1 - l0)
  out = []
  for chip in chips:
    hbm = topo.CHIPS[chip][0]
    limit = int(l0 + (hbm - m0) / slope) // 100 * 100
    row = {"chip": chip, "compiled_on": t.accelerator_type, "bytes_per_position_per_chip":
           slope, "sv_hist_len_limit": limit, "points": points}
    if verify:
      target = topo.for_chips(chip, t.chips).accelerator_type
      tried = {}
      fits, fails = max(lens), None
      length = int(0.98 * limit) // 100 * 100
      for _ in range(steps + 1):
        total = _history_total(cfg, length, target, batch)
        tried[length] = None if total is None else total / 1e9
        print(json.dumps({"topology": target, "sv_hist_len": length,
                          "total_gb": tried[length]}), flush=True)
        if total is not None:
          fits = max(fits, length)
          if fails is None:
            break
        else:
          fails = length if fails is None else min(fails, length)
        length = int((fits * fails) ** 0.5) // 100 * 100
        if length <= fits:
          break
      row["verified"] = {"topology": target, "longest_that_fits": fits,
                         "shortest_that_does_not": fails, "compiled": tried}
    out.append(row)
    print(json.dumps(row), flush=True)
  return out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  if _MODE.value == "tables":
    records = []
    for path in _COMMS_JSON.value:
      with open(path) as f:
        records += [r for r in json.load(f)["records"] if r.get("platform", "cpu") != "cpu"]
    if not records:
      sys.exit("tpu_capacity: --comms_json: no TPU-compiled records (benchmarks.comms --tpu)")
    result = tables(cfg, records, _BATCH.value, _VERIFY.value)
  else:
    from benchmarks import comms
    if _ROWS.value:  # the large tables' rows: a multiple of every chip count compiled
      cfg = comms._configure(cfg, _ROWS.value)
    result = history(cfg, _TOPOLOGY.value, [int(x) for x in _HIST_LENS.value], _CHIPS.value,
                     _BATCH.value, _VERIFY.value)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump({"command": " ".join(["python -m benchmarks.tpu_capacity"] + sys.argv[1:]),
                 "rows": result}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
