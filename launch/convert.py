"""Converts a public dataset folder into an mcjax event log (validated, written atomically).

    python -m launch.convert --format=kuailive --src=KUAILIVE_DIR --out=LOG_DIR
    python -m launch.convert --format=klm3 --src=M3_DIR --out=LOG_DIR --overwrite
    python -m launch.convert --format=kuailive --src=DIR --out=LOG_DIR --tz=Asia/Shanghai

Prints rows read per file, how each time column was read (epoch unit by magnitude, ISO with
zone, ...), events written, dropped rows per reason, and the validator's statistics; any
problem is one line on stderr (file, column, row, value) and exit code 1, with nothing written.
"""

from __future__ import annotations

import sys

from absl import app, flags

import launch

from mcjax import convert

_FORMAT = flags.DEFINE_enum("format", None, sorted(convert.FORMATS), "Source dataset format.",
                            required=True)
_SRC = flags.DEFINE_string("src", None, "Folder holding the dataset's files.", required=True)
_OUT = flags.DEFINE_string("out", None, "Event-log folder to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output log folder "
                                "(never a file, a non-log folder, or one overlapping --src).")
_TZ = flags.DEFINE_string("tz", None, "Time zone of local (zone-less) ISO times in the source "
                          "files, e.g. Asia/Shanghai or +08:00; without it they are refused.")


def main(argv) -> None:
  del argv
  try:
    stats, log_stats = convert.convert_to_log(_FORMAT.value, _SRC.value, _OUT.value,
                                              overwrite=_OVERWRITE.value, tz=_TZ.value)
  except (ValueError, FileExistsError) as e:  # SourceError, LogValidationError, ...
    print(f"ERROR: {launch.one_line(str(e))}", file=sys.stderr)
    sys.exit(1)
  except OSError as e:  # a full disk, a read-only folder, ...
    print(f"ERROR: cannot write --out={_OUT.value}: {e.strerror or e} "
          f"({e.filename or _OUT.value})", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {_OUT.value}")
  print(stats.summary())
  print(log_stats.summary())


if __name__ == "__main__":
  launch.run(main)
