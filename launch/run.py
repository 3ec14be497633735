"""The main job: runs with no flags at all on the embedded default world.

    python -m launch.run [--workdir=runs/default] [--preset=default] [--seed=0]

Generates the simulated world into WORKDIR/world (once), prints its summary and writes
WORKDIR/world_summary.json.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from tqdm import tqdm

from mcjax.sim import config, summary, world

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Folder for the world and results.")
_PRESET = flags.DEFINE_enum("preset", "default", sorted(config.PRESETS), "World preset.")
_SEED = flags.DEFINE_integer("seed", 0, "World seed.")


def ensure_world(workdir: str, preset: str, seed: int) -> str:
  """Generates WORKDIR/world unless it exists; returns its path."""
  log_dir = os.path.join(workdir, "world")
  if not os.path.exists(log_dir):
    with tqdm(total=len(world.STAGES), desc="generating world", unit="stage") as bar:
      world.build(log_dir, preset, seed, on_stage=lambda name: (bar.set_postfix_str(name),
                                                                bar.update(1)))
  return log_dir


def main(argv) -> None:
  del argv
  log_dir = ensure_world(_WORKDIR.value, _PRESET.value, _SEED.value)
  stats = summary.summarize(log_dir)
  print(summary.format_summary(stats))
  with open(os.path.join(_WORKDIR.value, "world_summary.json"), "w") as f:
    json.dump(stats, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  app.run(main)
