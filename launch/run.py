"""The main job: runs with no flags at all on the embedded default world.

    python -m launch.run [--workdir=runs/default] [--configs=full,no_moment,no_cross] \
        [--config.data.preset=default] [--config.data.world_seed=0] [--config.seed=0] \
        [--config.train.window_min=30 ...]

``--config.a.b=v`` overrides that key of every named config (only the keys given), the syntax
of ``launch.train``; ``python -m launch.model_info --keys`` lists them.

1. generates the simulated world of ``config.data.preset`` and ``config.data.world_seed`` into
   WORKDIR/world (once) and prints its summary;
2. trains and evaluates each named config online (prequential) on it with model seed
   ``config.seed``, into WORKDIR/<config> (sample caches shared in WORKDIR/samples; a rerun
   resumes or reuses finished runs);
3. writes WORKDIR/report.md: every task's metrics, Ranking_Score's AUC, PNG plots and the
   first config's top 5 lives for one request inside a highlight late in the log.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

import launch
from mcjax import config as mcconfig
from mcjax.sim import config, summary, world

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Folder for the world and results.")
_CONFIGS = flags.DEFINE_list("configs", ["full", "no_moment", "no_cross"],
                             "Named configs (mcjax/configs) to train and compare.")
_CONFIG = config_flags.DEFINE_config_dict(
    "config", mcconfig.default_config(), "Overrides for every named config "
    "(--config.train.window_min=30; only the keys given are applied).")


def ensure_world(workdir: str, preset: str, seed: int) -> str:
  """Generates WORKDIR/world unless it exists; returns its path."""
  log_dir = os.path.join(workdir, "world")
  if not os.path.exists(log_dir):
    with tqdm(total=len(world.STAGES), desc="generating world", unit="stage") as bar:
      world.build(log_dir, preset, seed, on_stage=lambda name: (bar.set_postfix_str(name),
                                                                bar.update(1)))
  return log_dir


def load_config(name: str, overrides: dict):
  """The named config with the --config overrides; a usage error otherwise."""
  try:
    return mcconfig.load_config(name, overrides)
  except ValueError as e:
    raise app.UsageError(f"--configs/--config: {e}") from None


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  cfgs = {name: load_config(name, overrides) for name in _CONFIGS.value}  # fail early
  worlds = {(c.data.preset, c.data.world_seed) for c in cfgs.values()}
  if len(worlds) != 1:
    raise app.UsageError(f"--configs: the configs ask for different worlds (config.data.preset, "
                         f"config.data.world_seed): {sorted(worlds)}; pass --config.data.preset "
                         "and --config.data.world_seed")
  (preset, world_seed), = worlds
  if preset not in config.PRESETS:
    raise app.UsageError(f"--config.data.preset={preset!r}: expected one of "
                         f"{sorted(config.PRESETS)}")
  timings = {}
  t = time.time()
  log_dir = ensure_world(workdir, preset, world_seed)
  timings["world"] = time.time() - t
  t = time.time()
  stats = summary.summarize(log_dir)
  print(text := summary.format_summary(stats))
  with open(os.path.join(workdir, "world_summary.json"), "w") as f:
    json.dump(stats, f, indent=2, sort_keys=True)
  timings["world summary"] = time.time() - t

  from mcjax import report
  from mcjax.train import RunError, data, loop
  runs = {}
  for name, cfg in cfgs.items():
    cfg.data.log_dir = log_dir
    t = time.time()
    samples = data.prepare(cfg, workdir, cache_dir=os.path.join(workdir, "samples"))
    try:
      runs[name] = loop.train_and_evaluate(cfg, os.path.join(workdir, name), samples)
    except RunError as e:
      sys.exit(f"FATAL {name}: {e}")
    timings[f"train + eval {name}"] = time.time() - t
    ctr = runs[name]["overall"]["ctr"]
    print(f"{name}: CTR AUC {ctr['auc']:.4f}  GAUC {ctr['gauc']:.4f}  "
          f"({timings[f'train + eval {name}']:.0f} s)")
  path = report.write_run_report(workdir, runs, log_dir, next(iter(cfgs.values())).model,
                                 world_summary=text, timings=timings)
  print(f"report: {path}")


if __name__ == "__main__":
  launch.run(main)
