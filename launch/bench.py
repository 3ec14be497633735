"""Throughput benchmark: the jitted train step, the Grain input pipeline, and both together.

    python -m launch.bench --mode=step --config.train.batch_size=1024 \
        --config.mesh.shape='(1,1)' --json_out=step.json
    python -m launch.bench --config=mcjax/configs/dlrm.py --mode=step
    python -m launch.bench --mode=pipeline [--samples_dir=DIR]
    python -m launch.bench --mode=e2e --config.moment.sv_hist_len=256
    python -m launch.bench --quick --mode=step          # tiny sizes, a few steps (tests)
    python -m launch.bench --mode=serve --workdir=RUN --log=EVENTS   # scoring latency

The batch is ``config.train.batch_size`` and the mesh ``config.mesh.shape`` (data, model; -1 =
the rest of the devices), both overridden like any key with ``--config.a.b=v``.
``step`` times the train step on synthetic batches of the real sample schema (no data, and
nothing from grain/tfds/array_record is imported, so it runs on a bare JAX + flax + optax +
ml_collections machine); ``pipeline`` times the Grain pipeline alone (batches/s); ``e2e``
times pipeline alone, step alone and pipeline + step in one run, so the bottleneck shows;
``serve`` times a trained run's scorer (``benchmarks/serve_bench.py``): p50/p99 latency of one
request (1 user x --candidates lives) with features from an event buffer and prebuilt, and
candidates/s in batch.

Timing follows big_vision/MaxText (``benchmarks/harness.py``): compile and warm-up steps are
not counted, results are blocked on, rates are global examples / wall time / chips. Reported:
examples/s/chip, ms/step (median, min, max over repeats), model FLOPs per example (XLA cost
analysis of forward + backward, ``mcjax.model.costs``), achieved FLOP/s, MFU against the
chip's peak in the precision the step's matmuls run in (``step_bench.step_precision``; CPU:
``--peak_tflops`` or a matmul probe of that dtype measured now; GPU/TPU: the published dense
peak, for a float32 step TF32 on NVIDIA and one bf16 pass on TPU, for
``model.compute_dtype=bfloat16`` bf16), the compiled step's FLOPs and bytes accessed, and the
embedding traffic per step
((rows gathered + rows updated) x dim x 4 bytes, 2 for bfloat16 tables).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from benchmarks import step_bench
from mcjax import configs

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/dlrm.py).")
_MODE = flags.DEFINE_enum("mode", "step", ["step", "pipeline", "e2e", "serve"], "What to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after the compile.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median and spread over them).")
_SPARSE = flags.DEFINE_bool("sparse", True, "Sparse row updates (False: dense full-table "
                            "updates, the O(vocabulary) reference).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Chip peak for MFU (default: published peak "
                           "on GPU/TPU, a matmul probe on CPU).")
_SAMPLES_DIR = flags.DEFINE_string("samples_dir", None, "pipeline/e2e: a samples folder "
                                   "(default: built from the small world under --cache_dir).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "runs/bench_cache", "Where the small world and "
                                 "its samples are built for pipeline/e2e.")
_SYNTHETIC = flags.DEFINE_integer("synthetic_samples", None, "pipeline/e2e: an in-memory "
                                  "random sample table of this many rows instead.")
_WORKERS = flags.DEFINE_integer("prefetch_workers", 0, "Grain worker processes.")
_MODEL_FLOPS = flags.DEFINE_bool("model_flops", True, "Compile forward + backward once more "
                                 "for the model FLOPs (off: the compiled step's FLOPs).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the JSON result here.")
_WORKDIR = flags.DEFINE_string("workdir", None, "serve: a trained run's folder.")
_LOG = flags.DEFINE_string("log", None, "serve: the event log the run was trained on.")
_CANDIDATES = flags.DEFINE_integer("candidates", 100, "serve: candidates per request.")
_QUICK = flags.DEFINE_bool("quick", False, "The `tiny` config's model, batch 32 (unless "
                           "--config.train.batch_size is given), a few steps (smoke test).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  timing = dict(steps=_STEPS.value, warmup=_WARMUP.value, repeats=_REPEATS.value)
  if _QUICK.value:
    given = config_flags.get_override_values(flags.FLAGS["config"])
    step_bench.shrink_for_quick(cfg)
    timing = dict(steps=2, warmup=1, repeats=2)
    if "train.batch_size" not in given:
      cfg.train.batch_size = 32
  batch_size = int(cfg.train.batch_size)
  mesh_shape = tuple(int(s) for s in cfg.mesh.shape)
  result = {"mode": _MODE.value}
  if _MODE.value == "serve":
    from benchmarks import serve_bench  # a trained run and its log, no synthetic data
    logging.set_verbosity(logging.WARNING)  # orbax logs every read
    if not (_WORKDIR.value and _LOG.value):
      raise app.UsageError("--mode=serve needs --workdir and --log")
    quick = dict(requests=5, batch_rows=256) if _QUICK.value else {}
    result["serve"] = serve_bench.run(_WORKDIR.value, _LOG.value, candidates=_CANDIDATES.value,
                                      **quick)
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
  text = json.dumps(result, indent=1, default=float)
  print(text)
  print(serve_bench.table(result["serve"]) if "serve" in result else step_bench.table(result))
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
