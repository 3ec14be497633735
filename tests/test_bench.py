"""launch/bench.py --quick: the JSON it writes has the documented keys (never its speed)."""

import json
import os
import subprocess
import sys

from benchmarks import harness
from xla_flags import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_KEYS = {
    "ms_per_step_median", "ms_per_step_min", "ms_per_step_max", "examples_per_s",
    "examples_per_s_per_chip", "model_flops_per_example", "achieved_flops", "mfu",
    "peak_flops", "step_flops", "step_bytes_accessed", "embedding_traffic", "chips", "mesh",
    "batch_size", "params", "compile_s", "compute_dtype"}
RATE_KEYS = {"batches_per_s", "examples_per_s", "ms_per_step_median"}


def test_harness_counts_only_timed_steps():
  calls = []
  timing = harness.time_steps(calls.append, block=lambda _: None, warmup=2, steps=3,
                              repeats=2)
  assert calls == list(range(9)) and len(timing["ms_per_step"]) == 2
  s = harness.summary(timing, examples_per_step=8, chips=2)
  assert s["examples_per_s_per_chip"] == s["examples_per_s"] / 2


def test_bench_quick_e2e_json(tmp_path):
  out = tmp_path / "bench.json"
  # one CPU device, cheap code generation (the numbers are not checked)
  env = dict(os.environ, XLA_FLAGS=" ".join(FAST_COMPILE), JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-m", "launch.bench", "--quick", "--mode=e2e",
                  f"--json_out={out}"], cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=300)
  result = json.loads(out.read_text())
  assert STEP_KEYS <= set(result["step"])
  assert {"rows_gathered", "rows_updated", "bytes"} <= set(result["step"]["embedding_traffic"])
  assert RATE_KEYS <= set(result["pipeline"]) and RATE_KEYS <= set(result["e2e"])
  assert result["pipeline_over_step"] > 0 and result["step"]["chips"] == 1


def test_ab_driver_interleaves_checkouts(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  subprocess.run([sys.executable, "-m", "benchmarks.ab", f"--old={ROOT}", f"--new={ROOT}",
                  "--rounds=1", f"--out={tmp_path}", "--", "--quick"], cwd=ROOT, env=env,
                 check=True, capture_output=True, timeout=600)
  result = json.loads((tmp_path / "ab.json").read_text())
  assert result["bench_flags"] == ["--quick"]
  assert len(result["ms_per_step"]["old"]) == len(result["ms_per_step"]["new"]) == 1
  assert {"old_0.json", "new_0.json"} <= {p.name for p in tmp_path.iterdir()}
  assert result["median_ratio"] > 0
