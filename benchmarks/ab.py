"""A/B of the train step (or the whole training loop) between two checkouts, interleaved
processes on one machine.

    git worktree add --detach ../mcjax_old <old commit>
    python -m benchmarks.ab --old=../mcjax_old --rounds=6 --out=runs/ab -- \
        --config.train.batch_size=1024 --config.model.embedding.dim=32 --config.model.d_model=32 \
        --config.moment.sv_hist_len=50 --config.moment.lv_hist_len=50

Each round runs ``python -m launch.bench --mode=step --nomodel_flops`` once in each checkout
(old then new, then new then old in the next round, ...), with the flags after ``--``; a
checkout's own code is imported because the process starts in it. On a shared machine load
from other jobs hits both alike: the numbers to read are the medians over rounds of each
checkout and the per-round ratios old / new ms/step.

``--mode=e2e`` compares the pipeline -> device -> step loop instead (``launch.bench
--mode=e2e``; give both sides a data source, e.g. ``--synthetic_samples=20000``).
``--old_flag`` / ``--new_flag`` (repeatable) add flags to one side only, so one checkout can
be A/B-tested against itself with a different setting, or an old checkout be given its own
spelling of a flag:

    python -m benchmarks.ab --old=. --new_flag=--config.model.compute_dtype=bfloat16 \
        --rounds=4 --out=runs/ab_bf16 -- --config.train.batch_size=1024
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_OLD = flags.DEFINE_string("old", None, "The old checkout (a git worktree).", required=True)
_NEW = flags.DEFINE_string("new", ".", "The new checkout.")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Rounds (one process per checkout each).")
_OUT = flags.DEFINE_string("out", "runs/ab", "Folder for the per-run JSON files.")
_OLD_FLAGS = flags.DEFINE_multi_string("old_flag", [], "A launch.bench flag for the old side "
                                       "only (after the shared ones).")
_NEW_FLAGS = flags.DEFINE_multi_string("new_flag", [], "A launch.bench flag for the new side "
                                       "only (after the shared ones).")
_MODE = flags.DEFINE_enum("mode", "step", ["step", "e2e"], "launch.bench --mode: the train "
                          "step alone, or pipeline -> device -> step (its 'e2e' timing is "
                          "compared; the process also times the step and the pipeline alone).")


def run(tree: str, name: str, i: int, bench_flags: list[str]) -> float:
  """ms/step median of one launch.bench process started in ``tree``."""
  path = os.path.abspath(os.path.join(_OUT.value, f"{name}_{i}.json"))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  subprocess.run([sys.executable, "-m", "launch.bench", f"--mode={_MODE.value}",
                  "--nomodel_flops", f"--json_out={path}"] + bench_flags, cwd=tree, env=env,
                 check=True, capture_output=True)
  with open(path) as f:
    return json.load(f)[_MODE.value]["ms_per_step_median"]


def main(argv) -> None:
  bench_flags = argv[1:]
  os.makedirs(_OUT.value, exist_ok=True)
  trees = {"old": _OLD.value, "new": _NEW.value}
  side_flags = {"old": _OLD_FLAGS.value, "new": _NEW_FLAGS.value}
  ms = {"old": [], "new": []}
  for i in range(_ROUNDS.value):
    for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
      ms[name].append(run(trees[name], name, i, bench_flags + side_flags[name]))
      print(f"round {i} {name}: {ms[name][-1]:.1f} ms/step", flush=True)
  ratios = [o / n for o, n in zip(ms["old"], ms["new"])]
  result = {"bench_flags": bench_flags, "old_flags": _OLD_FLAGS.value,
            "new_flags": _NEW_FLAGS.value, "ms_per_step": ms,
            "median_ms": {k: statistics.median(v) for k, v in ms.items()},
            "ratios_old_over_new": ratios, "median_ratio": statistics.median(ratios)}
  result["speedup_of_medians"] = result["median_ms"]["old"] / result["median_ms"]["new"]
  with open(os.path.join(_OUT.value, "ab.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
