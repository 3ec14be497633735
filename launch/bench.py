"""Throughput benchmark: the jitted train step, the Grain input pipeline, both, or scoring.

    python -m launch.bench --mode=step --config.train.batch_size=1024 \
        --config.mesh.shape='(1,1)' --json_out=step.json
    python -m launch.bench --config=mcjax/configs/dlrm.py --mode=step
    python -m launch.bench --mode=pipeline [--samples_dir=DIR]
    python -m launch.bench --mode=e2e --config.moment.sv_hist_len=256
    python -m launch.bench --quick --mode=step          # tiny sizes, a few steps (tests)
    python -m launch.bench --mode=serve --workdir=RUN --log=EVENTS   # scoring latency

Batch and mesh are ``config.train.batch_size`` / ``config.mesh.shape`` (``--config.a.b=v``).
``step``: the train step on synthetic batches of the sample schema (imports no grain/tfds);
``pipeline``: the Grain pipeline alone; ``e2e``: pipeline, step and both in one run, so the
bottleneck shows; ``serve``: p50/p99 latency of one request (1 user x --candidates lives) with
features from an event buffer and prebuilt, and candidates/s (``benchmarks/serve_bench.py``).
Timing (``benchmarks/harness.py``, as big_vision/MaxText): compile and warm-up not counted,
results blocked on, rates = global examples / wall time / chips. Reported: examples/s/chip,
ms/step (median, min, max), model FLOPs per example (XLA cost analysis), MFU against the peak
of the precision the step's matmuls run in (``step_bench.step_precision``: TF32 / bf16 pass
for float32, bf16 for ``model.compute_dtype=bfloat16``; CPU: --peak_tflops or a probe), FLOPs.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import launch
from benchmarks import step_bench
from mcjax import configs
from mcjax.eventlog.files import atomic_write

_CONFIG = launch.define_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/dlrm.py).")
_MODE = flags.DEFINE_enum("mode", "step", ["step", "pipeline", "e2e", "serve"], "What to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after the compile.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median and spread over them).")
_SPARSE = flags.DEFINE_bool("sparse", True, "Sparse row updates (False: dense, O(vocabulary)).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Chip peak for MFU (default: see above).")
_SAMPLES_DIR = flags.DEFINE_string("samples_dir", None, "pipeline/e2e: a samples folder.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "runs/bench_cache", "Else: small world + samples.")
_SYNTHETIC = flags.DEFINE_integer("synthetic_samples", None, "Or: this many random samples.")
_WORKERS = flags.DEFINE_integer("prefetch_workers", 0, "Grain worker processes.")
_MODEL_FLOPS = flags.DEFINE_bool("model_flops", True, "Model FLOPs from fwd + bwd (a compile).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the JSON result here.")
_WORKDIR = flags.DEFINE_string("workdir", None, "serve: a trained run's folder.")
_LOG = flags.DEFINE_string("log", None, "serve: the event log the run was trained on.")
_CANDIDATES = flags.DEFINE_integer("candidates", 100, "serve: candidates per request.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny model, batch 32 unless given, a few steps.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  timing = dict(steps=_STEPS.value, warmup=_WARMUP.value, repeats=_REPEATS.value)
  if _QUICK.value:
    step_bench.shrink_for_quick(cfg)
    timing = dict(steps=2, warmup=1, repeats=2)
    if "train.batch_size" not in config_flags.get_override_values(flags.FLAGS["config"]):
      cfg.train.batch_size = 32
  batch_size, mesh_shape = int(cfg.train.batch_size), tuple(int(s) for s in cfg.mesh.shape)
  result = {"mode": _MODE.value}
  if _MODE.value == "serve":
    from benchmarks import serve_bench  # a trained run and its log, no synthetic data
    logging.set_verbosity(logging.WARNING)  # orbax logs every read
    if not (_WORKDIR.value and _LOG.value):
      raise app.UsageError("--mode=serve needs --workdir and --log")
    result["serve"] = serve_bench.run(_WORKDIR.value, _LOG.value, candidates=_CANDIDATES.value,
                                      **(dict(requests=5, batch_rows=256) if _QUICK.value else {}))
  if _MODE.value in ("step", "e2e"):
    bench = step_bench.StepBench(cfg, batch_size, mesh_shape, sparse_update=_SPARSE.value,
                                 fast_compile=_QUICK.value,
                                 model_flops=_MODEL_FLOPS.value and not _QUICK.value)
    result["step"] = bench.run(**timing, peak_flops=None if _PEAK.value is None
                               else 1e12 * _PEAK.value)
  if _MODE.value in ("pipeline", "e2e"):
    from benchmarks import data_bench  # grain, tfds: only for the data modes
    source, result["data"] = data_bench.open_source(
        cfg, samples_dir=_SAMPLES_DIR.value, cache_dir=_CACHE_DIR.value,
        synthetic=_SYNTHETIC.value or (2_000 if _QUICK.value else None))
    result["pipeline"] = data_bench.pipeline_rate(
        cfg, source, batch_size, workers=_WORKERS.value, **timing)
    if _MODE.value == "e2e":
      result["e2e"] = data_bench.e2e_rate(cfg, source, bench, workers=_WORKERS.value,
                                          **timing)
      result["pipeline_over_step"] = (result["pipeline"]["examples_per_s"]
                                      / result["step"]["examples_per_s"])
  result["command"] = " ".join(["python -m launch.bench"] + sys.argv[1:])
  print(text := json.dumps(result, indent=1, default=float))
  print(serve_bench.table(result["serve"]) if "serve" in result else step_bench.table(result))
  if _JSON_OUT.value:
    atomic_write(_JSON_OUT.value, text + "\n")


if __name__ == "__main__":
  launch.run(main)
