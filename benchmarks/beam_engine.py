"""The Beam sample engine beside the in-process one on the same log: wall time, live exposures
per minute and the peak resident memory of every process (the launching process and each
Beam worker).

    python -m benchmarks.beam_engine --log=WORLD --out=/tmp/bench --workers=1,2

runs ``launch.build_samples`` once with ``--engine=local`` and once per worker count with
``--engine=beam --direct_running_mode=multi_processing --direct_num_workers=N`` (the
DirectRunner: its workers are child processes; the runner itself, in the launching process,
holds the data between stages, as a real runner's shuffle service would). Every run uses
``--novalidate``, so the numbers are the engines' (the door, when validating, reads the log in
the launching process for both engines; see ``benchmarks/RESULTS.md``). Peak memory is each
process's ``VmHWM`` (/proc), polled every 0.2 s over the process tree. Prints one Markdown
table row per run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

_LOG = flags.DEFINE_string("log", None, "Event-log folder.")
_OUT = flags.DEFINE_string("out", None, "Scratch folder for the samples (replaced).")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Beam worker counts to run.")
_MODE = flags.DEFINE_string("mode", "realtime", "Moment mode.")
_EXTRA = flags.DEFINE_list("beam_flags", [], "More flags for the Beam runs (e.g. "
                           "--config.beam.buckets=32).")
_LOCAL = flags.DEFINE_bool("local", True, "Also run the in-process engine.")


def _status(pid: int) -> dict:
  out = {}
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "Name"):
          out[key] = value.strip()
  except OSError:
    pass
  return out


def _children(pid: int) -> list[int]:
  kids = []
  try:
    for tid in os.listdir(f"/proc/{pid}/task"):
      with open(f"/proc/{pid}/task/{tid}/children") as f:
        kids += [int(c) for c in f.read().split()]
  except OSError:
    pass
  return kids


def run_one(cmd: list[str], log: str) -> dict:
  """Runs ``cmd`` (output to the file ``log``); returns wall seconds and the peak RSS (GB) of
  the root and its children."""
  start = time.perf_counter()
  with open(log, "w") as f:
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    return _watch(proc, cmd, log, start)


def _watch(proc, cmd, log, start) -> dict:
  peaks: dict[int, float] = {}
  while proc.poll() is None:
    todo, seen = [proc.pid], set()
    while todo:
      pid = todo.pop()
      if pid in seen:
        continue
      seen.add(pid)
      hwm = _status(pid).get("VmHWM")
      if hwm:
        peaks[pid] = max(peaks.get(pid, 0.0), int(hwm.split()[0]) / 1e6)
      todo += _children(pid)
    time.sleep(0.2)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
  workers = [gb for pid, gb in peaks.items() if pid != proc.pid]
  return {"wall_s": wall, "root_gb": peaks.get(proc.pid, 0.0),
          "worker_gb": max(workers, default=0.0), "workers_seen": len(workers)}


def main(argv) -> None:
  del argv
  base = [sys.executable, "-m", "launch.build_samples", f"--events={_LOG.value}",
          f"--config.moment.mode={_MODE.value}", "--novalidate", "--overwrite"]
  runs = [("local", [])] if _LOCAL.value else []
  runs += [(f"beam, {n} worker(s)", ["--engine=beam", "--direct_running_mode=multi_processing",
                                     f"--direct_num_workers={n}", *_EXTRA.value])
           for n in _WORKERS.value]
  os.makedirs(_OUT.value, exist_ok=True)
  print("| engine | wall (process) | build | peak RSS, launching process | peak RSS, "
        "largest worker | live exposures / minute (build) | buckets | spilled | samples |")
  print("|---|---|---|---|---|---|---|---|---|", flush=True)
  largest, first = {}, None
  for name, extra in runs:
    tag = name.replace(",", "").replace(" ", "-").replace("(", "").replace(")", "")
    out = os.path.join(_OUT.value, tag)
    shutil.rmtree(out, ignore_errors=True)
    got = run_one(base + [f"--out={out}"] + extra, os.path.join(_OUT.value, f"{tag}.log"))
    with open(os.path.join(out, "build_info.json")) as f:
      info = json.load(f)
    build_s = info["build_and_write_s"]
    live = info["stats"]["live_exposures"]
    worker = f"{got['worker_gb']:.2f} GB ({got['workers_seen']} processes)" \
        if name != "local" else "-"
    beam = info.get("engine") == "beam"
    spilled = f"{info['beam_spill_bytes'] / 2**30:.2f} GiB" if beam else "-"
    buckets = info["beam_layout"]["buckets"] if beam else "-"
    # every count of the engine (samples by kind, evaluation records, events, orphans, ...)
    same = (info["stats"], info["counts"]) == first if first else None
    first = first or (info["stats"], info["counts"])
    verdict = {None: ", ".join(f"{split} {sum(k.values()):,}"
                               for split, k in info["counts"].items()),
               True: "same counts and stats", False: "**DIFFERENT**"}[same]
    print(f"| {name} | {got['wall_s']:.1f} s | {build_s:.1f} s | {got['root_gb']:.2f} GB | "
          f"{worker} | {live / build_s * 60:,.0f} | {buckets} | {spilled} | {verdict} |",
          flush=True)
    largest.update(info.get("beam_largest_key") or {})
  if largest:
    print("\nLargest key group (rows), per stage: " + ", ".join(
        f"{k} {v:,}" for k, v in largest.items()))


if __name__ == "__main__":
  flags.mark_flags_as_required(["log", "out"])
  app.run(main)
