"""The main job: runs with no flags at all on the embedded default world.

    python -m launch.run [--workdir=runs/default] [--preset=default] [--seed=0] \
        [--configs=full,no_moment,no_cross]

1. generates the simulated world into WORKDIR/world (once) and prints its summary;
2. trains and evaluates each named config online (prequential) on it, into WORKDIR/<config>
   (sample caches shared in WORKDIR/samples; a rerun resumes or reuses finished runs);
3. writes WORKDIR/report.md with the metric tables and PNG plots.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from tqdm import tqdm

from mcjax import config as mcconfig
from mcjax.sim import config, summary, world

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Folder for the world and results.")
_PRESET = flags.DEFINE_enum("preset", "default", sorted(config.PRESETS), "World preset.")
_SEED = flags.DEFINE_integer("seed", 0, "World seed.")
_CONFIGS = flags.DEFINE_list("configs", ["full", "no_moment", "no_cross"],
                             "Named configs from experiments/configs to train and compare.")


def ensure_world(workdir: str, preset: str, seed: int) -> str:
  """Generates WORKDIR/world unless it exists; returns its path."""
  log_dir = os.path.join(workdir, "world")
  if not os.path.exists(log_dir):
    with tqdm(total=len(world.STAGES), desc="generating world", unit="stage") as bar:
      world.build(log_dir, preset, seed, on_stage=lambda name: (bar.set_postfix_str(name),
                                                                bar.update(1)))
  return log_dir


def load_config(name: str):
  """The named config ``experiments/configs/<name>.py``; a usage error names --configs."""
  try:
    return mcconfig.load_named(name)
  except ValueError as e:
    raise app.UsageError(f"--configs: {e}") from None


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  cfgs = {name: load_config(name) for name in _CONFIGS.value}  # fail early on a bad name
  timings = {}
  t = time.time()
  log_dir = ensure_world(workdir, _PRESET.value, _SEED.value)
  timings["world"] = time.time() - t
  t = time.time()
  stats = summary.summarize(log_dir)
  text = summary.format_summary(stats)
  print(text)
  with open(os.path.join(workdir, "world_summary.json"), "w") as f:
    json.dump(stats, f, indent=2, sort_keys=True)
  timings["world summary"] = time.time() - t

  from mcjax import report, trainer
  from mcjax.train import RunError, data
  runs = {}
  for name, cfg in cfgs.items():
    cfg.data.log_dir = log_dir
    cfg.seed = _SEED.value
    t = time.time()
    samples = data.prepare(cfg, workdir, cache_dir=os.path.join(workdir, "samples"))
    try:
      runs[name] = trainer.train_and_evaluate(cfg, os.path.join(workdir, name), samples)
    except RunError as e:
      sys.exit(f"FATAL {name}: {e}")
    timings[f"train + eval {name}"] = time.time() - t
    ctr = runs[name]["overall"]["ctr"]
    print(f"{name}: CTR AUC {ctr['auc']:.4f}  GAUC {ctr['gauc']:.4f}  "
          f"({timings[f'train + eval {name}']:.0f} s)")
  from mcjax.model.collisions import collision_report
  collisions = collision_report(log_dir, next(iter(cfgs.values())).model)
  path = report.write_report(workdir, runs, world_summary=text, timings=timings,
                             collisions=collisions)
  print(f"report: {path}")


if __name__ == "__main__":
  app.run(main)
