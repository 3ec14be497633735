"""Converters from public live-streaming datasets into the mcjax event log.

``convert_to_log(fmt, src, out_dir)`` first refuses an output that overlaps the source folder
or that ``overwrite`` may not replace (a file, a folder that is not a log), then reads the
dataset folder, builds the log in memory, validates it (``eventlog.validate``) and only then
writes it atomically (``eventlog.io``). ``tz`` is the zone of local (zone-less) times in the
source files; without it such times are refused (see ``sources``).
"""

from __future__ import annotations

import pyarrow as pa

from mcjax.convert import assemble, kuailive, kuailive_m3, sources, times
from mcjax.convert.assemble import ConvertStats
from mcjax.convert.sources import SourceError
from mcjax.eventlog.validate import LogStats

FORMATS = {"kuailive": kuailive.convert, "klm3": kuailive_m3.convert,
           "kuailive_m3": kuailive_m3.convert}  # klm3 is the short name of KuaiLive-M3

__all__ = ["FORMATS", "ConvertStats", "SourceError", "convert_tables", "convert_to_log"]


def convert_tables(fmt: str, src: str, tz: str | None = None
                   ) -> tuple[pa.Table, dict[str, pa.Table], ConvertStats]:
  """Reads dataset folder ``src`` of format ``fmt`` (a key of FORMATS) into log tables."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
  if tz is not None:
    times.check_tz(tz)
  return FORMATS[fmt](src, tz=tz)


def convert_to_log(fmt: str, src: str, out_dir: str, *, overwrite: bool = False,
                   tz: str | None = None) -> tuple[ConvertStats, LogStats]:
  """Converts, validates, then writes the log folder ``out_dir`` atomically."""
  assemble.check_output(src, out_dir, overwrite)
  events, side, stats = convert_tables(fmt, src, tz)
  log_stats = assemble.finish(events, side, out_dir, overwrite, stats)
  return stats, log_stats
