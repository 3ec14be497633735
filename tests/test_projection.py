"""benchmarks.projection: step-time bounds from compiled costs and collective bytes; the MFU
peak of the precision the float32 step runs in (benchmarks.step_bench)."""

import types

import pytest

from benchmarks import projection, step_bench


def _record(layout, rows, flops, bytes_accessed, wire):
  data, model = (int(x) for x in layout.split("x"))
  return {"layout": layout, "devices": data * model, "data": data, "model": model,
          "rows": rows, "batch_per_chip": 1024,
          "cost": {"flops": flops, "bytes_accessed": bytes_accessed,
                   "argument_size_in_bytes": 2e9, "temp_size_in_bytes": 1e9},
          "summary": {"wire_bytes": wire}}


def test_bounds_terms_dominant_and_weak_scaling():
  records = [_record("8x1", 10**5, 494e9, 4.8e9, 45e6),      # H200: 1 ms, 1 ms, 0.1 ms
             _record("8x1", 10**8, 494e9, 99e9, 45e6),       # bytes of the 10^5 table used
             _record("32x1", 10**5, 494e9, 4.8e9, 900e6)]    # H200 comm: 2 ms
  rows = {(r["chip"], r["layout"], r["rows"]): r for r in projection.project(records)}
  small = rows[("H200", "8x1", 10**5)]
  assert small["compute_s"] == pytest.approx(1e-3) and small["memory_s"] == pytest.approx(1e-3)
  assert small["comm_s"] == pytest.approx(1e-4) and small["bound_s"] == pytest.approx(1e-3)
  assert small["no_overlap_s"] == pytest.approx(2.1e-3) and small["fits"]
  big = rows[("H200", "8x1", 10**8)]
  assert big["hbm_bytes_accessed"] == 4.8e9 and big["hbm_bytes_from_rows"] == 10**5
  wide = rows[("H200", "32x1", 10**5)]
  assert wide["dominant"] == "comm" and wide["bound_s"] == pytest.approx(2e-3)
  assert wide["weak_scaling_efficiency"] == pytest.approx(0.5)
  assert small["weak_scaling_efficiency"] == 1.0
  v5p = rows[("TPU v5p", "8x1", 10**5)]
  assert v5p["compute_s"] == pytest.approx(494e9 / 459e12)
  assert "| H200 | 32x1 |" in projection.markdown(list(rows.values()), 10**5)


def test_mfu_peak_is_the_step_precision():
  h200 = types.SimpleNamespace(device_kind="NVIDIA H200", platform="gpu")
  assert step_bench.chip_peak_flops(h200) == (494e12, "tf32")  # fp32 dots on TF32 cores
  assert step_bench.chip_peak_flops(h200, "bf16") == (989e12, "bf16")
  assert step_bench.chip_peak_flops(h200, "fp32") == (67e12, "fp32")
  v5p = types.SimpleNamespace(device_kind="TPU v5p", platform="tpu")
  assert step_bench.chip_peak_flops(v5p) == (459e12, "bf16")
  cpu = types.SimpleNamespace(device_kind="cpu", platform="cpu")
  assert step_bench.chip_peak_flops(cpu) == (None, "")
  # a model.compute_dtype=bfloat16 step runs bf16 dots: its MFU is against the bf16 peak
  assert step_bench.step_precision("gpu") == "tf32"
  assert step_bench.step_precision("gpu", "bfloat16") == "bf16"
  assert step_bench.step_precision("cpu") == "fp32"
  assert step_bench.step_precision("cpu", "bfloat16") == "bf16"
  assert step_bench.chip_peak_flops(h200, step_bench.step_precision("gpu", "bfloat16")) == (
      989e12, "bf16")
