"""Step-time scans: table size, history length, batch size and mesh shape.

    python -m benchmarks.scans --scan=tables,history,batch,mesh --out=runs/scans

Each point is one ``python -m launch.bench --mode=step`` process (its own compile, fresh
memory), run one after the other; each writes ``OUT/<scan>_<point>.json`` and the scan prints
a markdown table. The mesh scan runs on 8 fake host devices
(``--xla_force_host_platform_device_count=8``): correctness of the sharded step only, its
times are NOT performance numbers (one CPU pretends to be 8 devices).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_SCAN = flags.DEFINE_list("scan", ["tables", "history", "batch", "mesh"], "Scans to run.")
_OUT = flags.DEFINE_string("out", "runs/scans", "Folder for the per-point JSON files.")
_CONFIG = flags.DEFINE_string("config", "mcjax/configs/full.py", "Base config file.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats.")

TABLE = "sv_item"  # the biggest table of the default config
# scan -> [(point name, extra flags)]
SCANS = {
    "tables": [(f"1e{e}", ["--config.train.batch_size=256",
                           f"--config.model.embedding.vocab.{TABLE}={10**e}"])
               for e in (4, 5, 6, 7)],
    "history": [(str(n), [f"--config.train.batch_size={b}", f"--config.moment.sv_hist_len={n}"])
                for n, b in ((100, 64), (1000, 64), (10000, 64))],
    "batch": [(str(b), [f"--config.train.batch_size={b}"]) for b in (64, 256, 1024)],
    "mesh": [(f"{d}x{m}", ["--config.train.batch_size=256", f"--config.mesh.shape=({d},{m})"])
             for d, m in ((8, 1), (4, 2), (2, 4))],
}


def run_point(scan: str, name: str, extra: list[str], out_dir: str) -> dict:
  path = os.path.join(out_dir, f"{scan}_{name}.json")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if scan == "mesh":
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  steps, repeats = (2, 2) if scan == "mesh" else (_STEPS.value, _REPEATS.value)  # not perf
  cmd = [sys.executable, "-m", "launch.bench", "--mode=step", f"--config={_CONFIG.value}",
         f"--steps={steps}", f"--repeats={repeats}", "--warmup=1",
         "--nomodel_flops", f"--json_out={path}"] + extra
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  with open(path) as f:
    return json.load(f)["step"]


def main(argv) -> None:
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  for scan in _SCAN.value:
    if scan not in SCANS:
      raise app.UsageError(f"--scan: unknown scan {scan!r}; known: {sorted(SCANS)}")
    rows = []
    for name, extra in SCANS[scan]:
      s = run_point(scan, name, extra, _OUT.value)
      rows.append((name, s))
      print(f"{scan} {name}: {s['ms_per_step_median']:.1f} ms/step", flush=True)
    base = rows[0][1]["ms_per_step_median"]
    print(f"\n{scan} (flags: {' '.join(SCANS[scan][0][1])} ...)\n")
    print("| point | batch | ms/step median [min, max] | vs first | examples/s/chip | "
          "GFLOP/step (compiled) | embedding MB/step |")
    print("|---|---|---|---|---|---|---|")
    for name, s in rows:
      print(f"| {name} | {s['batch_size']} | {s['ms_per_step_median']:.1f} "
            f"[{s['ms_per_step_min']:.1f}, {s['ms_per_step_max']:.1f}] | "
            f"{s['ms_per_step_median'] / base:.2f}x | {s['examples_per_s_per_chip']:,.0f} | "
            f"{s['step_flops'] / 1e9:.2f} | {s['embedding_traffic']['bytes'] / 1e6:.1f} |")
    print(flush=True)


if __name__ == "__main__":
  app.run(main)
