"""Validates an event-log folder: prints its statistics, or the first broken rule and exits 1.

    python -m launch.validate --log=DIR
"""

from __future__ import annotations

import sys

from absl import app, flags

import launch
from mcjax.eventlog import validate

_LOG = flags.DEFINE_string("log", None, "Event-log folder to validate.", required=True)


def main(argv) -> None:
  del argv
  try:
    stats = validate.validate_log(_LOG.value)
  except validate.LogValidationError as e:
    print(f"INVALID: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"OK: {_LOG.value}")
  print(stats.summary())


if __name__ == "__main__":
  launch.run(main)
