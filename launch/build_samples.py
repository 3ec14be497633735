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

``--engine=beam`` builds the same folder with the Apache Beam pipeline (``mcjax.moment.beam``),
which never holds the whole log in one worker. Beam's own flags pass through unchanged::

    python -m launch.build_samples --engine=beam --events=LOG --out=SAMPLES \
        --direct_num_workers=2 --direct_running_mode=multi_processing   # DirectRunner
    python -m launch.build_samples --engine=beam --events=gs-fuse/LOG --out=/mnt/shared/S \
        --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=LOOPBACK

(the output folder must be on a file system every worker sees). ``--cache_dir=ROOT`` instead of
``--out`` writes into ``ROOT/<mode>-<hash>/``, the folder ``launch.train`` takes from its sample
cache (``--workdir``'s ``samples/``), so a run trains on samples built either way.

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
from mcjax.samples.build import ENGINES, build_samples_dir, cache_key, format_report

_LOG = flags.DEFINE_string("events", None, "Event-log folder to read.")
_OUT = flags.DEFINE_string("out", None, "Samples folder to write.")
_CACHE = flags.DEFINE_string("cache_dir", None, "Instead of --out: a sample cache root; writes "
                             "ROOT/<mode>-<hash>, the folder launch.train reads from it.")
_ENGINE = flags.DEFINE_enum("engine", "local", list(ENGINES), "local: the in-process engine; "
                            "beam: the Apache Beam pipeline (Beam's own flags pass through).")
_BUCKETS = flags.DEFINE_integer("beam_buckets", None, "--engine=beam: hash buckets per key "
                                "(default: mcjax.moment.beam.stages.Layout).")
_SALTS = flags.DEFINE_integer("beam_salts", None, "--engine=beam: keys a live's, video's or "
                              "author's exposures are spread over for the side-table joins.")
_CROWD_RANGE = flags.DEFINE_float("beam_crowd_range_s", None, "--engine=beam: the time range "
                                  "a live's crowd features are computed in (>= 300).")
_WRITE_RANGE = flags.DEFINE_float("beam_write_range_s", None, "--engine=beam: the time range "
                                  "of sample times written as one part.")
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


def _layout():
  """The Beam layout from the --beam_* flags (None: the defaults)."""
  from mcjax.moment.beam import stages
  given = {"buckets": _BUCKETS.value, "salts": _SALTS.value,
           "crowd_range_ms": None if _CROWD_RANGE.value is None
           else round(_CROWD_RANGE.value * 1000),
           "write_range_ms": None if _WRITE_RANGE.value is None
           else round(_WRITE_RANGE.value * 1000)}
  given = {k: v for k, v in given.items() if v is not None}
  if not given:
    return None
  try:
    return dataclasses.replace(stages.Layout(), **given).validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def main(argv) -> None:
  rest = argv[1:]  # flags this program does not define: Beam's, or typos
  if rest and _ENGINE.value != "beam":
    raise app.UsageError(f"unknown flag(s) {rest} (Beam's flags need --engine=beam)")
  if not _LOG.value or bool(_OUT.value) == bool(_CACHE.value):
    raise app.UsageError("--events and one of --out, --cache_dir are required")
  cfg = moment_config_from_flags()
  out = _OUT.value or os.path.join(_CACHE.value, cache_key(_LOG.value, cfg))
  try:
    info = build_samples_dir(_LOG.value, out, cfg, overwrite=_OVERWRITE.value,
                             num_shards=_NUM_SHARDS.value, validate=_VALIDATE.value,
                             engine=_ENGINE.value, beam_args=rest,
                             beam_layout=_layout() if _ENGINE.value == "beam" else None)
  except LogValidationError as e:
    sys.exit(f"INVALID: {e}")
  except (ValueError, OSError, RuntimeError) as e:  # overlap, exists, unreadable log, disk, ...
    sys.exit(f"ERROR: {' '.join(str(e).split())[:2000]}")
  print(f"wrote {os.path.abspath(out)}")
  print(format_report(info))


def _parse(argv):
  """absl flags; the ones it does not define are left for Beam (checked in main)."""
  return flags.FLAGS(argv, known_only=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
