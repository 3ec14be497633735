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
3. runs the real-time loop (``launch.realtime``'s, with the `tiny` model) over the same world
   through the stream engine, unpaced, into WORKDIR/realtime (its own report.md there);
   ``--norealtime`` skips it;
4. writes WORKDIR/report.md: every task's metrics, Ranking_Score's AUC, PNG plots, the
   real-time loop's numbers and the first config's top 5 lives for one request inside a
   highlight late in the log.
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
_REALTIME = flags.DEFINE_bool("realtime", True, "Also run the real-time loop (the tiny model, "
                              "the stream engine, unpaced) over the world.")
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


def run_realtime(workdir: str, log_dir: str, overrides: dict) -> dict:
  """The real-time loop over ``log_dir``: events -> stream engine -> continuous trainer ->
  served versions, the `tiny` model (batch 256, a version after every step, part-filled
  batches after a minute of event time), unpaced; WORKDIR/realtime/{metrics.json,report.md}."""
  from launch import realtime_report
  from mcjax.train import realtime
  cfg = load_config("tiny", overrides)
  cfg.data.log_dir = log_dir
  cfg.train.batch_size = 256
  cfg.realtime.max_wait_ms = 60_000.0
  cfg.realtime.publish_every_steps, cfg.realtime.publish_every_s = 1, 0.0
  cfg.realtime.speed, cfg.realtime.request_rate = 0.0, 0.0
  work = os.path.join(workdir, "realtime")
  finished = os.path.join(work, "metrics.json")
  if os.path.exists(finished):  # a rerun reuses a finished loop (an interrupted one resumes)
    with open(finished) as f:
      out = json.load(f)
    if not out["realtime"].get("stopped"):
      return out
  with tqdm(desc="real-time loop", unit="step") as bar:
    def progress(line: str) -> None:  # "step N  E events/s ... recent CTR AUC A  loss L"
      words = line.split()
      bar.set_postfix_str(f"{words[2]} events/s, recent CTR AUC {words[-3]}")
      bar.update(int(words[1]) - bar.n)
    out = realtime.run_loop(cfg, realtime.stream_source(cfg, "replay", log_dir), work,
                            progress=progress, progress_every_s=1.0)
  realtime_report.write(work, out)
  return out


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
  rt = None
  if _REALTIME.value:
    t = time.time()
    try:
      rt = run_realtime(workdir, log_dir, overrides)
    except RunError as e:
      sys.exit(f"FATAL realtime: {e}")
    timings["real-time loop (tiny)"] = time.time() - t
    r = rt["realtime"]
    print(f"real-time loop (tiny): CTR AUC {rt['overall']['ctr']['auc']:.4f}, "
          f"{r['trained_rows']:,} samples in {r['wall_s']:.0f} s ({r['speed_factor']}x real "
          f"time)")
  path = report.write_run_report(workdir, runs, log_dir, next(iter(cfgs.values())).model,
                                 world_summary=text, timings=timings, realtime=rt)
  print(f"report: {path}")


if __name__ == "__main__":
  launch.run(main)
