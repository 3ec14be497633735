"""Throughput of the sample input pipeline alone (shards -> padded numpy batches).

    python -m benchmarks.loader_bench --synthetic_n=200000 --batch_size=1024 \
        --sv_len=256 --lv_len=64
    python -m benchmarks.loader_bench --samples_dir=SAMPLES_DIR --split=train

With --synthetic_n a random sample table (histories up to 2 x the widths, so truncation is
exercised) is written to a temporary folder first; the write rate is reported too. Prints one
JSON object and a small table: batches/s and samples/s, time-ordered and shuffled.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags
from tabulate import tabulate

from mcjax.samples import loader, shards
from mcjax.samples import table as sample_table

_SAMPLES_DIR = flags.DEFINE_string("samples_dir", None, "A samples folder (build_samples).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read from --samples_dir.")
_SYNTHETIC_N = flags.DEFINE_integer("synthetic_n", None, "Write and read this many random "
                                    "samples instead of --samples_dir.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Global batch size.")
_SV_LEN = flags.DEFINE_integer("sv_len", 256, "Short-video history width.")
_LV_LEN = flags.DEFINE_integer("lv_len", 64, "Live history width.")
_WORKERS = flags.DEFINE_list("prefetch_workers", ["0", "2"], "Grain worker counts to try.")
_QUICK = flags.DEFINE_bool("quick", False, "Few batches (a smoke run).")


def _rate(it, max_batches: int) -> tuple[int, float]:
  it = iter(it)
  next(it)  # start-up (worker spawn, first block reads) is not counted
  start, batches = time.perf_counter(), 0
  for _ in it:
    batches += 1
    if batches >= max_batches:
      break
  if hasattr(it, "close"):
    it.close()
  return batches, time.perf_counter() - start


def run(source, *, batch_size, sv_len, lv_len, workers, max_batches) -> list[dict]:
  rows = []
  for shuffle in (False, True):
    for w in workers:
      ds = loader.make_batches(source, batch_size=batch_size, sv_len=sv_len, lv_len=lv_len,
                                 shuffle=shuffle, prefetch_workers=w, process_index=0,
                                 process_count=1)
      n, seconds = _rate(ds, max_batches)
      rows.append({"order": "shuffled" if shuffle else "time", "prefetch_workers": w,
                   "batches": n, "batches_per_s": n / seconds,
                   "samples_per_s": n * batch_size / seconds})
  return rows


def main(argv) -> None:
  del argv
  bs, sv, lv = _BATCH_SIZE.value, _SV_LEN.value, _LV_LEN.value
  result = {"batch_size": bs, "sv_len": sv, "lv_len": lv}
  with tempfile.TemporaryDirectory() as tmp:
    if _SYNTHETIC_N.value:
      table = sample_table.random_sample_table(_SYNTHETIC_N.value, max_sv=2 * sv, max_lv=2 * lv)
      start = time.perf_counter()
      shards.write_samples(table, tmp, "train")
      seconds = time.perf_counter() - start
      result.update(synthetic_n=_SYNTHETIC_N.value, write_samples_per_s=len(
          table["sample_ts_ms"]) / seconds, shard_bytes=sum(
              os.path.getsize(os.path.join(tmp, "train", f))
              for f in os.listdir(os.path.join(tmp, "train"))))
      del table
      source = shards.open_samples(tmp, "train")
    elif _SAMPLES_DIR.value:
      source = shards.open_samples(_SAMPLES_DIR.value, _SPLIT.value)
      result.update(samples_dir=_SAMPLES_DIR.value, split=_SPLIT.value)
    else:
      raise app.UsageError("give --samples_dir or --synthetic_n")
    result["num_samples"] = len(source)
    max_batches = 5 if _QUICK.value else max(5, min(200, len(source) // bs - 1))
    result["runs"] = run(source, batch_size=bs, sv_len=sv, lv_len=lv,
                         workers=[int(w) for w in _WORKERS.value], max_batches=max_batches)
  print(json.dumps(result, indent=1))
  print(tabulate([[r["order"], r["prefetch_workers"], r["batches"], f"{r['batches_per_s']:.1f}",
                   f"{r['samples_per_s']:,.0f}"] for r in result["runs"]],
                 headers=["order", "workers", "batches", "batches/s", "samples/s"]))


if __name__ == "__main__":
  app.run(main)
