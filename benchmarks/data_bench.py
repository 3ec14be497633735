"""The input-pipeline and end-to-end benchmarks behind ``launch/bench.py --mode=pipeline|e2e``.

``pipeline_rate`` times the Grain pipeline alone (padded numpy batches out of
``mcjax.samples.loader.make_batches``); ``e2e_rate`` times pipeline -> device -> train step,
the trainer's inner loop. Both use ``benchmarks/harness.py`` like the step benchmark.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from benchmarks import harness
from benchmarks.step_bench import StepBench
from mcjax.contract.batch import host_batch
from mcjax import config as mcconfig
from mcjax.samples import loader, shards
from mcjax.samples import table as sample_table


def open_source(cfg: ml_collections.ConfigDict, *, samples_dir: str | None, cache_dir: str,
                synthetic: int | None):
  """(source, description): an in-memory random table of ``synthetic`` rows, the ``train``
  split of ``samples_dir``, or the small world's samples built (once) under ``cache_dir``."""
  if synthetic:
    m = cfg.moment
    table = sample_table.random_sample_table(synthetic, max_sv=2 * int(m.sv_hist_len),
                                       max_lv=2 * int(m.lv_hist_len))
    return sample_table.TableSource(table), {"source": f"synthetic table of {synthetic} rows"}
  if not samples_dir:
    from mcjax.samples.build import ensure_samples
    from mcjax.sim import world
    log_dir = os.path.join(cache_dir, "world_small_seed0")
    if not os.path.exists(log_dir):
      world.build(log_dir, "small", 0)
    samples_dir = ensure_samples(log_dir, os.path.join(cache_dir, "samples"),
                                 mcconfig.moment_config(cfg))
  source = shards.open_samples(samples_dir, "train")
  return source, {"source": "samples folder (train split)", "num_samples": len(source)}


def _batches(cfg, source, batch_size: int, workers: int, needed: int):
  per_epoch = loader.num_batches(len(source), batch_size)
  return loader.make_batches(
      source, batch_size=batch_size, sv_len=int(cfg.moment.sv_hist_len),
      lv_len=int(cfg.moment.lv_hist_len), shuffle=bool(cfg.train.shuffle_within_window),
      num_epochs=-(-needed // per_epoch) + 1, prefetch_workers=workers, process_index=0,
      process_count=1)


def _timed(it, step, *, batch_size, steps, warmup, repeats, block) -> dict:
  try:
    timing = harness.time_steps(step, block=block, warmup=warmup, steps=steps,
                                repeats=repeats)
  finally:
    if hasattr(it, "close"):
      it.close()
  out = harness.summary(timing, examples_per_step=batch_size)
  out["batches_per_s"] = 1e3 / out["ms_per_step_median"]
  return out


def pipeline_rate(cfg, source, batch_size: int, *, workers: int, steps: int, warmup: int,
                  repeats: int) -> dict:
  """Batches/s and examples/s of the Grain pipeline alone."""
  it = iter(_batches(cfg, source, batch_size, workers, 1 + warmup + steps * repeats))
  out = _timed(it, lambda i: next(it), batch_size=batch_size, steps=steps, warmup=warmup,
               repeats=repeats, block=lambda _: None)
  out["prefetch_workers"] = workers
  return out


def e2e_rate(cfg, source, bench: StepBench, *, workers: int, steps: int, warmup: int,
             repeats: int) -> dict:
  """Pipeline -> device -> train step: the trainer's inner loop."""
  it = iter(_batches(cfg, source, bench.batch_size, workers, 1 + warmup + steps * repeats))
  step = lambda i: bench.step(bench.to_device(host_batch(next(it))))  # noqa: E731
  out = _timed(it, step, batch_size=bench.batch_size, steps=steps, warmup=warmup,
               repeats=repeats, block=jax.block_until_ready)
  out["prefetch_workers"] = workers
  return out
