"""Runs the Moment engine on a stream: events in, samples out as their windows close.

    python -m launch.stream --source=replay:runs/default/world --out=runs/stream_samples
    python -m launch.stream --source=redis://127.0.0.1:6379/events --out=runs/stream_samples \
        --config.moment.mode=realtime --config.stream.allowed_lateness_s=5

writes the samples folder ``launch.build_samples`` writes (``train/``, ``eval/``; for an
in-order replay the same samples), growing: parts are committed with the source position at
every checkpoint (``--checkpoint_s``; and when the source ends or on SIGTERM/SIGINT) and the
folder is republished then. Run again on the same ``--out`` it resumes from the last
checkpoint. Refused rows (late, repeated, malformed) go to ``OUT/.stream/dead_letters.jsonl``.
A progress line every ``--progress_s``. Every ``MomentConfig`` field is a key of
``--config.moment``, every ``StreamConfig`` field of ``--config.stream``. Every refusal or
failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import dataclasses
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mcjax.moment.config import MomentConfig
from mcjax.stream import run as run_lib
from mcjax.stream.engine import StreamConfig

_SOURCE = flags.DEFINE_string("source", None, "replay:LOG_DIR or redis://host:port/STREAM.")
_OUT = flags.DEFINE_string("out", None, "Samples folder to write (resumed if it holds a "
                           "stream checkpoint).")
_SPEED = flags.DEFINE_float("speed", 0.0, "Replay pace, logged seconds per wall second (0: as "
                            "fast as the engine takes it); for Redis, the publisher's (for "
                            "the watermark lag only).")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", 16384, "Most event rows per micro-batch (a "
                                   "paced source delivers what is due; this binds when behind).")
_PART_ROWS = flags.DEFINE_integer("part_rows", 256 * 1024, "Samples per written part.")
_CHECKPOINT_S = flags.DEFINE_float("checkpoint_s", 30.0, "Wall seconds between checkpoints.")
_PROGRESS_S = flags.DEFINE_float("progress_s", 10.0, "Wall seconds between progress lines.")
_ORACLE = flags.DEFINE_string("oracle", None, "Log folder whose _oracle/ fills the evaluation "
                              "records' oracle fields (default: the replayed log's).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out samples folder "
                               "instead of resuming it.")

_CONFIG = config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict({
    "moment": dataclasses.asdict(MomentConfig()),
    "stream": dataclasses.asdict(StreamConfig())}),
    "--config.moment.<field> (MomentConfig) and --config.stream.<field> (StreamConfig).")


def configs_from_flags() -> tuple[MomentConfig, StreamConfig]:
  try:
    moment = MomentConfig(**_CONFIG.value.moment.to_dict()).validate()
    stream = StreamConfig(**_CONFIG.value.stream.to_dict()).validate()
  except ValueError as e:
    raise app.UsageError(str(e).replace("MomentConfig.", "--config.moment.")
                         .replace("StreamConfig.", "--config.stream.")) from e
  return moment, stream


def main(argv) -> None:
  if argv[1:]:
    raise app.UsageError(f"unknown argument(s) {argv[1:]}")
  if not _SOURCE.value or not _OUT.value:
    raise app.UsageError("--source and --out are required")
  cfg, scfg = configs_from_flags()
  spec = _SOURCE.value
  log_dir = spec[len("replay:"):] if spec.startswith("replay:") else None
  try:
    out = run_lib.check_out(_OUT.value, {"--source": log_dir} if log_dir else {},
                            _OVERWRITE.value)
    source = run_lib.open_source(spec, speed=_SPEED.value, batch_rows=_BATCH_ROWS.value)
    got = run_lib.run(source, out, cfg, scfg, oracle=run_lib.read_oracle(_ORACLE.value or log_dir),
                      checkpoint_s=_CHECKPOINT_S.value, part_rows=_PART_ROWS.value,
                      progress_s=_PROGRESS_S.value, speed=_SPEED.value,
                      log=lambda line: print(line, flush=True))
  except (ValueError, OSError, RuntimeError) as e:
    sys.exit(f"ERROR: {' '.join(str(e).split())[:2000]}")
  lag = got["lag"]
  lag = (f"; watermark lag max {lag['max_s']:.2f} s, p99 {lag['p99_s']:.2f} s, at the end "
         f"{lag['end_s']:.2f} s" if lag["samples"] else "")
  print(f"wrote {out}: train {got['counts']['train']:,} eval {got['counts']['eval']:,} "
        f"samples; dead letters {got['dead'] or 0}{lag}", flush=True)


if __name__ == "__main__":
  app.run(main)
