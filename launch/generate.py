"""Generates a simulated Kuaishou world (an event-log folder with its oracle).

    python -m launch.generate --preset=small --out=DIR --seed=1

Presets (mcjax/sim/config.py): small (tests), default (make run), m3like (the default sizes
with KuaiLive-M3-like timing).  Size flags (--users, --authors, --hours, --topics,
--live_exposures) default to the preset's.
"""

from __future__ import annotations

import time

from absl import flags

import launch
from mcjax.eventlog import files, io
from mcjax.sim import config, world

_PRESET = flags.DEFINE_enum("preset", "default", sorted(config.PRESETS), "World preset.")
_OUT = flags.DEFINE_string("out", None, "Folder to write the log into.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives identical files.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it is an event-log "
                               "folder (never a file or another folder).")
_USERS = flags.DEFINE_integer("users", None, "Number of users (default: preset's).",
                             lower_bound=1)
_AUTHORS = flags.DEFINE_integer("authors", None, "Number of authors (default: preset's).",
                               lower_bound=1)
_HOURS = flags.DEFINE_integer("hours", None, "Hours of event time (default: preset's).",
                             lower_bound=1)
_TOPICS = flags.DEFINE_integer("topics", None, "Number of topics (default: preset's).",
                              lower_bound=1)
_LIVE = flags.DEFINE_integer("live_exposures", None,
                             "Expected live exposures (default: preset's).",
                             lower_bound=1)


def main(argv) -> None:
  del argv
  files.check_output(_OUT.value, "--out", reads={}, overwrite=_OVERWRITE.value,
                     kind="an event-log folder", marks=io.LOG_MARKS)
  start = time.perf_counter()
  out = world.build(_OUT.value, _PRESET.value, _SEED.value, overwrite=_OVERWRITE.value,
                    users=_USERS.value, authors=_AUTHORS.value, hours=_HOURS.value,
                    topics=_TOPICS.value, live_exposures=_LIVE.value)
  print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  launch.run(main)
