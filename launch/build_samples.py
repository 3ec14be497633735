"""Runs the Moment engine on an event log and writes its samples as ArrayRecord shards.

    python -m launch.build_samples --events=LOG_DIR --out=SAMPLES_DIR --mode=realtime

writes ``SAMPLES_DIR/train/`` and ``SAMPLES_DIR/eval/`` (see ``mcjax.samples.shards``) and
``SAMPLES_DIR/build_info.json``, then prints the sample counts per kind and the throughput.
Moment flags left unset take ``MomentConfig``'s defaults. The library side (and the cache
the trainer uses) is ``mcjax.samples.build``.
"""

from __future__ import annotations

import os

from absl import app, flags

from mcjax.samples.build import build_samples_dir, format_report

_LOG = flags.DEFINE_string("events", None, "Event-log folder to read.")
_OUT = flags.DEFINE_string("out", None, "Samples folder to write.")
_MODE = flags.DEFINE_enum("mode", None, ["realtime", "on_close", "fast_slow"],
                          "Sample stream (default: MomentConfig's).")
_WINDOW_S = flags.DEFINE_float("window_s", None, "Real-time window length in seconds.")
_FIRST_ONLY = flags.DEFINE_bool("first_only", None, "Train each label only the first time "
                                "it fires (False: the no_first_only ablation).")
_LONG_VIEW_S = flags.DEFINE_float("long_view_s", None, "Watch seconds that fire lvtr.")
_SV_HIST_LEN = flags.DEFINE_integer("sv_hist_len", None, "Short-video history length.")
_LV_HIST_LEN = flags.DEFINE_integer("lv_hist_len", None, "Live history length.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "ArrayRecord files per split "
                                   "(default: from the size).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def moment_config_from_flags():
  """MomentConfig from the flags that were set (others keep the config's defaults)."""
  from mcjax.moment.config import MomentConfig
  overrides = {name: flag.value for name, flag in (
      ("mode", _MODE), ("window_s", _WINDOW_S), ("first_only", _FIRST_ONLY),
      ("long_view_s", _LONG_VIEW_S), ("sv_hist_len", _SV_HIST_LEN),
      ("lv_hist_len", _LV_HIST_LEN)) if flag.value is not None}
  return MomentConfig(**overrides).validate()


def main(argv) -> None:
  del argv
  if not _LOG.value or not _OUT.value:
    raise app.UsageError("--events and --out are required")
  info = build_samples_dir(_LOG.value, _OUT.value, moment_config_from_flags(),
                           overwrite=_OVERWRITE.value, num_shards=_NUM_SHARDS.value)
  print(f"wrote {os.path.abspath(_OUT.value)}")
  print(format_report(info))


if __name__ == "__main__":
  app.run(main)
