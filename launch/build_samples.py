"""Runs the Moment engine on an event log and writes its samples as ArrayRecord shards.

    python -m launch.build_samples --events=LOG_DIR --out=SAMPLES_DIR \
        --config.moment.mode=realtime --config.moment.window_s=30

writes ``SAMPLES_DIR/{train,eval}/`` (``mcjax.samples.shards``) and ``build_info.json``, and
prints the sample counts per kind and the throughput. Every ``MomentConfig`` field is a key of
``--config.moment`` (the trainer config's section; ``--help`` lists them); the library side is
``mcjax.samples.build``. ``--engine=beam`` builds the same folder with the Apache Beam pipeline
(``mcjax.samples.beam``: no worker holds the whole log); Beam's own flags pass through::

    python -m launch.build_samples --engine=beam --events=LOG --out=SAMPLES \
        --direct_num_workers=2 --direct_running_mode=multi_processing   # local runner
        [--config.beam.buckets=64 --config.beam.crowd_range_ms=900000]  # how work is keyed
                                    # (buckets 0, the default: one per 400k events, >= 16)
    python -m launch.build_samples --engine=beam --events=gs-fuse/LOG --out=/mnt/shared/S \
        --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=LOOPBACK

(the output on a file system every worker sees). ``--cache_dir=ROOT`` instead of ``--out``
writes ``ROOT/<mode>-<hash>/``, the folder ``launch.train`` takes from its sample cache. The log
is validated first (``--novalidate`` skips it); nothing is written when it is invalid, when
``--out`` overlaps ``--events`` or exists (without ``--overwrite``, or is not a samples
folder). Every refusal or failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

import launch
from mcjax.moment.config import MomentConfig
from mcjax.eventlog.validate import LogValidationError
from mcjax.samples.beam import stages
from mcjax.samples.build import ENGINES, build_samples_dir, cache_key, format_report

_LOG = flags.DEFINE_string("events", None, "Event-log folder to read.")
_OUT = flags.DEFINE_string("out", None, "Samples folder to write.")
_CACHE = flags.DEFINE_string("cache_dir", None, "Instead of --out: a sample cache root; writes "
                             "ROOT/<mode>-<hash>, the folder launch.train reads from it.")
_ENGINE = flags.DEFINE_enum("engine", "local", list(ENGINES), "local: the in-process engine; "
                            "beam: the Apache Beam pipeline (Beam's own flags pass through).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "ArrayRecord files per part.",
                                  lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out samples folder.")
_VALIDATE = flags.DEFINE_bool("validate", True, "Validate the log first (as launch.validate).")


def _help() -> str:
  """The --config flag's help: each MomentConfig and Layout field with its default."""
  return "The Moment engine's settings, --config.moment.<field>=value:\n" + "\n".join(
      f"  {f.name}: {f.metadata['doc']} (default: {f.default})"
      for f in dataclasses.fields(MomentConfig)) + (
      "\n--engine=beam's layout, --config.beam.<field>=value (stages.Layout): " + ", ".join(
          f"{f.name} (default: {f.default})" for f in dataclasses.fields(stages.Layout)))


# The moment section: the same keys as the trainer config's; beam: how the Beam work is keyed.
_CONFIG = config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict({
    "moment": dataclasses.asdict(MomentConfig()),
    "beam": dataclasses.asdict(stages.Layout())}), _help())


def configs_from_flags() -> tuple[MomentConfig, "stages.Layout"]:
  """(MomentConfig, Layout) from --config.moment.* / --config.beam.*; a bad value: usage error."""
  try:
    moment = MomentConfig(**_CONFIG.value.moment.to_dict()).validate()
    layout = stages.Layout(**_CONFIG.value.beam.to_dict()).validate()
  except ValueError as e:
    raise app.UsageError(str(e).replace("MomentConfig.", "--config.moment.")
                         .replace("Layout.", "--config.beam.")) from e
  return moment, layout


def main(argv) -> None:
  rest = argv[1:]  # flags this program does not define: Beam's, or typos
  if rest and _ENGINE.value != "beam":
    raise app.UsageError(f"unknown flag(s) {rest} (Beam's flags need --engine=beam)")
  if not _LOG.value or bool(_OUT.value) == bool(_CACHE.value):
    raise app.UsageError("--events and one of --out, --cache_dir are required")
  cfg, layout = configs_from_flags()
  out = _OUT.value or os.path.join(_CACHE.value, cache_key(_LOG.value, cfg))
  try:
    info = build_samples_dir(_LOG.value, out, cfg, overwrite=_OVERWRITE.value,
                             num_shards=_NUM_SHARDS.value, validate=_VALIDATE.value,
                             engine=_ENGINE.value, beam_args=rest, beam_layout=layout)
  except LogValidationError as e:
    sys.exit(f"INVALID: {launch.one_line(str(e))}")
  except (ValueError, OSError, RuntimeError) as e:  # overlap, exists, unreadable log, disk, ...
    sys.exit(f"ERROR: {launch.one_line(str(e))}")
  print(f"wrote {os.path.abspath(out)}")
  print(format_report(info))


if __name__ == "__main__":  # flags this program does not define are left for Beam (see main)
  launch.run(main, known_only=True)
