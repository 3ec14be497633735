"""The trainer's memory estimate (``mcjax.runtime.memory``) against the measured peak.

    python -m benchmarks.memory_bench --world=W [--steps=20] \
        --runs=tiny:64,tiny:2048,smoke:256

For each config:batch_size, prints the estimate (and its parts) and runs ``launch.train``
for ``--steps`` steps on the world ``W`` (offline mode: train, then score the held-out part)
in a fresh workdir, then reads the child's peak resident memory (``ru_maxrss`` from
``os.wait4``). The estimate is meant to be above the measured peak (it refuses configs, so it
errs on the large side) and within a small factor of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

from mcjax import configs


def _config(name: str):
  spec = importlib.util.spec_from_file_location(name, configs.path(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(world: str, name: str, batch: int, steps: int) -> dict:
  """The estimate and the measured peak of one training run."""
  from mcjax.runtime import memory  # pylint: disable=g-import-not-at-top
  cfg = _config(name)
  cfg.train.batch_size = batch
  est = memory.estimate(cfg)
  with tempfile.TemporaryDirectory() as work:
    argv = [sys.executable, "-m", "launch.train", f"--config={configs.path(name)}",
            f"--workdir={work}", f"--data={world}", "--config.train.mode=offline",
            f"--config.train.batch_size={batch}", f"--config.train.max_steps={steps}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
      raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr.read().decode()[-2000:]}")
  return {"config": name, "batch": batch, "estimate": est.total(), "parts": est.parts(),
          "peak": usage.ru_maxrss * 1024, "wall_s": wall}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--world", required=True)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--runs", default="tiny:64,tiny:2048,smoke:256")
  args = p.parse_args()
  mb = lambda n: f"{n / 2**20:,.0f}"
  print("| config | batch | estimate MB | of which activations MB | measured peak MB | "
        "estimate / peak |")
  print("|---|---|---|---|---|---|")
  for run in args.runs.split(","):
    name, batch = run.split(":")
    r = measure(args.world, name, int(batch), args.steps)
    print(f"| {name} | {r['batch']} | {mb(r['estimate'])} | {mb(r['parts']['activations'])} | "
          f"{mb(r['peak'])} | {r['estimate'] / r['peak']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
