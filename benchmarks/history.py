"""History-length scan of the train step, exact vs approximate GSU, interleaved processes.

    python -m benchmarks.history --lengths=1000,10000 --approx=off,simhash --rounds=3 \\
        --out=runs/history -- --config.train.batch_size=64 --steps=3 --warmup=1 --repeats=3

Every round runs one ``python -m launch.bench --mode=step --nomodel_flops`` process per
point (short-video history length x ``model.gsu.approx``), in a rotated order (round i starts
at point i), with the flags after ``--``; as in ``benchmarks.ab``, load from other jobs hits
every point alike, and the numbers to read are per-round ratios and medians over rounds.
Printed: a markdown table of the points (median ms/step over rounds, [min, max], compiled
GFLOP/step, embedding MB/step) and, per mode, the median over rounds of (longest / shortest
history) ms/step and of (mode at the longest / exact at the shortest). One CPU device
(XLA_FLAGS dropped).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

def _define_flags() -> None:
  """Defines the command-line flags: only when run as a script, so that importing this module
  (the tests import several benchmarks into one process) defines none."""
  global _LENGTHS, _APPROX, _ROUNDS, _OUT
  _LENGTHS = flags.DEFINE_list("lengths", ["1000", "10000"], "Short-video history lengths.")
  _APPROX = flags.DEFINE_list("approx", ["off", "simhash"], "model.gsu.approx values.")
  _ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds (one process per point each).")
  _OUT = flags.DEFINE_string("out", "runs/history", "Folder for the per-run JSON files.")


def run_point(length: int, approx: str, i: int, bench_flags: list[str]) -> dict:
  """The step result of one launch.bench process (see the module doc)."""
  path = os.path.abspath(os.path.join(_OUT.value, f"{approx}_{length}_{i}.json"))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  subprocess.run([sys.executable, "-m", "launch.bench", "--mode=step", "--nomodel_flops",
                  f"--json_out={path}", f"--config.moment.sv_hist_len={length}",
                  f"--config.model.gsu.approx={approx}"] + bench_flags,
                 env=env, check=True, capture_output=True)
  with open(path) as f:
    return json.load(f)["step"]


def main(argv) -> None:
  bench_flags = argv[1:]
  os.makedirs(_OUT.value, exist_ok=True)
  points = [(int(n), a) for a in _APPROX.value for n in _LENGTHS.value]
  runs = {p: [] for p in points}
  for i in range(_ROUNDS.value):
    for j in range(len(points)):
      p = points[(i + j) % len(points)]
      runs[p].append(run_point(*p, i, bench_flags))
      print(f"round {i} sv_hist_len={p[0]} approx={p[1]}: "
            f"{runs[p][-1]['ms_per_step_median']:.1f} ms/step", flush=True)
  ms = {p: [r["ms_per_step_median"] for r in rs] for p, rs in runs.items()}
  short, long = min(int(n) for n in _LENGTHS.value), max(int(n) for n in _LENGTHS.value)
  print(f"\nflags: {' '.join(bench_flags)}\n")
  print("| sv_hist_len | gsu.approx | ms/step, median over rounds [min, max] | per round | "
        "GFLOP/step (compiled) | embedding MB/step |")
  print("|---|---|---|---|---|---|")
  for p in points:
    r = runs[p][0]
    print(f"| {p[0]:,} | {p[1]} | {statistics.median(ms[p]):.1f} [{min(ms[p]):.1f}, "
          f"{max(ms[p]):.1f}] | {', '.join(f'{m:.0f}' for m in ms[p])} | "
          f"{r['step_flops'] / 1e9:.2f} | {r['embedding_traffic']['bytes'] / 1e6:.1f} |")
  ratios = {}
  base = "off" if "off" in _APPROX.value else _APPROX.value[0]
  for a in _APPROX.value:
    own = [x / y for x, y in zip(ms[(long, a)], ms[(short, a)])]
    vs_base = [x / y for x, y in zip(ms[(long, a)], ms[(short, base)])]
    ratios[a] = {"long_over_short": statistics.median(own),
                 f"long_over_{base}_short": statistics.median(vs_base)}
    print(f"\n{a}: {long:,} / {short:,} = {ratios[a]['long_over_short']:.2f}x (per round "
          f"{', '.join(f'{x:.2f}' for x in own)}); {a} at {long:,} / {base} at {short:,} = "
          f"{ratios[a][f'long_over_{base}_short']:.2f}x")
  with open(os.path.join(_OUT.value, "history.json"), "w") as f:
    json.dump({"bench_flags": bench_flags, "ms_per_step": {f"{a}_{n}": v for (n, a), v
                                                          in ms.items()},
               "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
