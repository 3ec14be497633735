"""Validates an event-log folder or a training run's checkpoints.

    python -m launch.validate --log=DIR        # statistics, or the first broken rule
    python -m launch.validate --workdir=RUN    # every checkpoint against its checksums

--log prints the log's statistics, or the first broken rule and exits 1. --workdir checks
every checkpoint of the run (``ckpt/`` and ``best/``) against the checksums written with it:
one ``OK`` line per checkpoint, one ``CORRUPT`` line per damaged one (naming the file), exit 1
when any is corrupt (a resume falls back to the newest intact checkpoint).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import launch
from mcjax.eventlog import files, validate

_LOG = flags.DEFINE_string("log", None, "Event-log folder to validate.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's folder: verify its "
                               "checkpoints.")


def check_workdir(workdir: str) -> int:
  """Prints one line per checkpoint of ``workdir``; returns how many are corrupt."""
  from mcjax.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  folders = [os.path.join(workdir, d) for d in ("ckpt", "best")]
  if not any(os.path.isdir(f) for f in folders):
    raise FileNotFoundError(f"--workdir={workdir}: no checkpoint (ckpt/ is missing)")
  bad = 0
  for folder in folders:
    for step in checkpoint.steps_on_disk(folder):
      where = os.path.join(folder, str(step))
      try:
        verified = checkpoint.verify_step(folder, step)
      except files.CorruptFileError as e:
        print(f"CORRUPT: {launch.one_line(str(e))}", file=sys.stderr)
        bad += 1
        continue
      print(f"OK: {where}" + ("" if verified else " (no checksums: not verified)"))
  return bad


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_LOG.value) == bool(_WORKDIR.value):
    raise app.UsageError("give one of --log, --workdir")
  if _WORKDIR.value:
    sys.exit(1 if check_workdir(_WORKDIR.value) else 0)
  try:
    stats = validate.validate_log(_LOG.value)
  except validate.LogValidationError as e:
    print(f"INVALID: {launch.one_line(str(e))}", file=sys.stderr)
    sys.exit(1)
  print(f"OK: {_LOG.value}")
  print(stats.summary())


if __name__ == "__main__":
  launch.run(main)
