"""Runs the Moment engine on an event log and writes its samples as ArrayRecord shards.

    python -m launch.build_samples --events=LOG_DIR --out=SAMPLES_DIR \
        --config.moment.mode=realtime --config.moment.window_s=30

writes ``SAMPLES_DIR/train/`` and ``SAMPLES_DIR/eval/`` (see ``mcjax.samples.shards``) and
``SAMPLES_DIR/build_info.json``, then prints the sample counts per kind and the throughput.
Every ``MomentConfig`` field is a key of the ``moment`` section, overridden with the syntax of
every launcher (``--config.moment.features_at=sample``, ``--config.moment.max_watch_s=1800``,
``--config.moment.first_only=False``); keys left unset take its defaults (``--help`` lists them
with their docs). The library side (and the cache
the trainer uses) is ``mcjax.samples.build``.

The log is validated first (as ``launch.validate`` does; ``--novalidate`` skips it) and nothing
is written when it is invalid, when ``--out`` overlaps ``--events``, or when ``--out`` exists
(without ``--overwrite``, or is not a samples folder). Every refusal or failure is one line on
stderr and exit code 1.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mcjax.moment.config import MomentConfig
from mcjax.eventlog.validate import LogValidationError
from mcjax.samples.build import build_samples_dir, format_report

_LOG = flags.DEFINE_string("events", None, "Event-log folder to read.")
_OUT = flags.DEFINE_string("out", None, "Samples folder to write.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "ArrayRecord files per part "
                                   "(default: from the size).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists (a samples "
                                "folder only, never one overlapping --events).")
_VALIDATE = flags.DEFINE_bool("validate", True, "Validate the log first (as launch.validate); "
                              "--novalidate skips it.")


def _moment_help() -> str:
  """The --config flag's help: each MomentConfig field with its doc and default."""
  return "The Moment engine's settings, --config.moment.<field>=value:\n" + "\n".join(
      f"  {f.name}: {f.metadata['doc']} (default: {f.default})"
      for f in dataclasses.fields(MomentConfig))


# Only the moment section: the same keys as the trainer config's ``moment`` section.
_CONFIG = config_flags.DEFINE_config_dict(
    "config", ml_collections.ConfigDict({"moment": dataclasses.asdict(MomentConfig())}),
    _moment_help())


def moment_config_from_flags() -> MomentConfig:
  """MomentConfig from --config.moment.* (keys not given keep the defaults)."""
  try:
    return MomentConfig(**_CONFIG.value.moment.to_dict()).validate()
  except ValueError as e:
    raise app.UsageError(str(e).replace("MomentConfig.", "--config.moment.")) from e


def main(argv) -> None:
  del argv
  if not _LOG.value or not _OUT.value:
    raise app.UsageError("--events and --out are required")
  cfg = moment_config_from_flags()
  try:
    info = build_samples_dir(_LOG.value, _OUT.value, cfg, overwrite=_OVERWRITE.value,
                             num_shards=_NUM_SHARDS.value, validate=_VALIDATE.value)
  except LogValidationError as e:
    sys.exit(f"INVALID: {e}")
  except (ValueError, OSError) as e:  # overlap, exists, unreadable log, full disk, ...
    sys.exit(f"ERROR: {e}")
  print(f"wrote {os.path.abspath(_OUT.value)}")
  print(format_report(info))


if __name__ == "__main__":
  app.run(main)
