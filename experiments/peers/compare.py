"""mcjax's train step vs DeepCTR-Torch's DIN at equal sizes, side by side in one run.

    python -m experiments.peers.compare --batch_size=1024 --hist_len=50 --dim=32 \
        --out=runs/peers

Alternates processes on the same machine: DIN (peer venv, ``din_bench.py``), an mcjax
variant, DIN, the next variant, ..., DIN, so load from other jobs hits both alike; DIN's rate
is the median over its runs. mcjax variants: ``full`` (both histories at ``hist_len``),
``no_cross`` (live history only: DIN's shape, one behaviour sequence) and ``dlrm`` (no
histories). Each is ``launch/bench.py --mode=step`` with the same batch and embedding width.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch_size", 1024, "Batch for both.")
_HIST = flags.DEFINE_integer("hist_len", 50, "History length for both.")
_DIM = flags.DEFINE_integer("dim", 32, "Embedding width for both.")
_OUT = flags.DEFINE_string("out", "runs/peers", "Folder for the JSON files.")
_PEER_PY = flags.DEFINE_string("peer_python", "experiments/peers/.venv/bin/python",
                               "The peer venv's python (experiments/peers/setup.sh).")
_VARIANTS = flags.DEFINE_list("variants", ["full", "no_cross", "dlrm"], "mcjax configs.")

TIMING = ["--steps=10", "--warmup=3", "--repeats=5"]


def _run(cmd, path) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  with open(path) as f:
    return json.load(f)


def din(i: int) -> dict:
  path = os.path.join(_OUT.value, f"din_{i}.json")
  return _run([_PEER_PY.value, "-m", "experiments.peers.din_bench", f"--batch_size={_BATCH.value}",
               f"--hist_len={_HIST.value}", f"--dim={_DIM.value}", f"--json_out={path}"]
              + TIMING, path)


def mcjax(variant: str) -> dict:
  path = os.path.join(_OUT.value, f"mcjax_{variant}.json")
  h, d = _HIST.value, _DIM.value
  sizes = [f"--config.model.embedding.dim={d}", f"--config.model.d_model={d}"]
  if variant != "dlrm":
    sizes += [f"--config.moment.sv_hist_len={h}", f"--config.moment.lv_hist_len={h}"]
  return _run([sys.executable, "-m", "launch.bench", "--mode=step", "--nomodel_flops",
               f"--config=mcjax/configs/{variant}.py",
               f"--config.train.batch_size={_BATCH.value}",
               f"--json_out={path}"] + sizes + TIMING, path)["step"]


def main(argv) -> None:
  del argv
  if not os.path.exists(_PEER_PY.value):
    raise app.UsageError(f"--peer_python={_PEER_PY.value} is missing: run "
                         "bash experiments/peers/setup.sh")
  os.makedirs(_OUT.value, exist_ok=True)
  dins, ours = [din(0)], {}
  for i, variant in enumerate(_VARIANTS.value, 1):
    ours[variant] = mcjax(variant)
    dins.append(din(i))
  din_rate = statistics.median(r["examples_per_s"] for r in dins)
  result = {"batch_size": _BATCH.value, "hist_len": _HIST.value, "dim": _DIM.value,
            "din_examples_per_s_runs": [r["examples_per_s"] for r in dins],
            "din_examples_per_s": din_rate, "din_torch_threads": dins[0]["torch_threads"],
            "mcjax": {v: {"examples_per_s": r["examples_per_s"],
                          "ms_per_step_median": r["ms_per_step_median"],
                          "ratio_vs_din": r["examples_per_s"] / din_rate}
                      for v, r in ours.items()}}
  with open(os.path.join(_OUT.value, "compare.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  print(f"\n| model | examples/s | vs DIN |\n|---|---|---|\n"
        f"| DeepCTR-Torch DIN (median of {len(dins)} runs) | {din_rate:,.0f} | 1.00x |")
  for v, r in result["mcjax"].items():
    print(f"| mcjax {v} | {r['examples_per_s']:,.0f} | {r['ratio_vs_din']:.2f}x |")


if __name__ == "__main__":
  app.run(main)
