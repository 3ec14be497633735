"""Reading and writing event-log folders (see ``schema``), atomically.

``write_log`` writes every table into a locked staging sibling (``files.staging``) and renames
it into place only when all of them are written, so a failure leaves the target untouched (or
absent); ``overwrite`` replaces only an existing event-log folder (never a file, never an
unrelated folder).

Every table of a log may also be a Spark-style *folder of parts* (``events.parquet/`` holding
``part-00000-....parquet``, ...): ``table_files`` lists its parts in name order (hidden and
``_``-prefixed files such as ``_SUCCESS`` and ``.crc`` skipped, ``key=value`` subfolders read
as hive partitions) and ``read_table`` reads them as one table, in that order. A file that
cannot be read raises ``UnreadableTableError`` naming it.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mcjax.eventlog import files
from mcjax.eventlog import schema as S

LOG_MARKS = (S.EVENTS_FILE, *S.SIDE_TABLES)  # what an existing log folder holds


class UnreadableTableError(ValueError):
  """A log table (file or folder of parts) is missing or is not readable Parquet."""

  def __init__(self, path: str, problem: str):
    super().__init__(f"{path}: {problem}")
    self.path, self.problem = path, problem


def conform(table: pa.Table, target: pa.Schema, where: str) -> pa.Table:
  """``table`` with exactly ``target``'s columns, in its order and types (extra columns
  dropped); ValueError naming ``where`` for a missing column or a value that does not cast."""
  missing = [n for n in target.names if n not in table.column_names]
  if missing:
    raise ValueError(f"{where}: missing column(s) {missing}")
  try:
    return table.select(target.names).cast(target)
  except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
    raise ValueError(f"{where}: cannot cast to the schema ({e})") from None


def write_log(out_dir: str, events: pa.Table, side: dict[str, pa.Table],
              oracle: dict[str, pa.Table] | None = None, *, overwrite: bool = False,
              extra_files: dict[str, bytes] | None = None) -> str:
  """Writes a complete log folder atomically and returns its path.

  Args:
    out_dir: the folder to create.
    events: the event table (columns of ``schema.EVENT_SCHEMA``, any extra dropped).
    side: file name (a key of ``schema.SIDE_TABLES``) -> table.
    oracle: optional file name (a key of ``schema.ORACLE_TABLES``) -> table.
    overwrite: replace an existing folder (only after the new one is fully written).
    extra_files: more files to put in the folder (name -> bytes), e.g. ``meta.json``.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.lexists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists (pass overwrite=True to replace it)")
  files.check_replaceable(out_dir, "--out", LOG_MARKS, "an event-log folder")
  with files.staging(out_dir) as tmp:
    pq.write_table(conform(events, S.EVENT_SCHEMA, S.EVENTS_FILE),
                   os.path.join(tmp, S.EVENTS_FILE))
    for name, schema in S.SIDE_TABLES.items():
      if name not in side:
        raise ValueError(f"side table {name} not given")
      pq.write_table(conform(side[name], schema, name), os.path.join(tmp, name))
    if oracle:
      os.makedirs(os.path.join(tmp, S.ORACLE_DIR))
      for name, table in oracle.items():
        if name not in S.ORACLE_TABLES:
          raise ValueError(f"unknown oracle table {name}; expected {sorted(S.ORACLE_TABLES)}")
        pq.write_table(conform(table, S.ORACLE_TABLES[name], f"{S.ORACLE_DIR}/{name}"),
                       os.path.join(tmp, S.ORACLE_DIR, name))
    for name, data in (extra_files or {}).items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    files.replace_dir(tmp, out_dir, overwrite)
  return out_dir


def table_files(path: str) -> list[str]:
  """The Parquet files of a table: ``[path]`` for a file, the sorted visible files under a
  folder of parts (hidden or ``_``-prefixed names skipped); raises UnreadableTableError."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise UnreadableTableError(path, "missing file")
  found = []
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
    found += [os.path.join(root, n) for n in names if not n.startswith((".", "_"))]
  if not found:
    raise UnreadableTableError(path, "a folder without Parquet parts")
  return sorted(found)


def read_table(path: str, columns: list[str] | None = None, *,
               dictionary: list[str] | None = None) -> pa.Table:
  """Reads a Parquet file or a folder of parts (in name order) as one table.

  ``dictionary``: string columns to read dictionary-encoded (cheaper to map to codes).
  """
  parts = table_files(path)
  try:
    if len(parts) == 1 and parts[0] == path:
      return pq.read_table(path, columns=columns, read_dictionary=dictionary)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(
        dictionary_columns=dictionary or []))
    return ds.dataset(parts, format=fmt, partitioning="hive",
                      partition_base_dir=path).to_table(columns=columns)
  except (pa.ArrowException, OSError) as e:
    raise UnreadableTableError(path, f"unreadable Parquet file ({type(e).__name__}: "
                               f"{_one_line(e)})") from e


def _one_line(e: Exception) -> str:
  return " ".join(str(e).split())


def table_path(log_dir: str, name: str) -> str:
  """Where table ``name`` (e.g. ``events.parquet``, ``_oracle/exposures.parquet``) lives."""
  return os.path.join(log_dir, name)


def read_events(log_dir: str, columns: list[str] | None = None) -> pa.Table:
  """Reads ``events.parquet`` (a file or a folder of parts) of a log folder."""
  return read_table(table_path(log_dir, S.EVENTS_FILE), columns=columns)


def read_side(log_dir: str, name: str) -> pa.Table:
  """Reads one side table (a key of ``schema.SIDE_TABLES``) of a log folder."""
  return read_table(table_path(log_dir, name))


def read_oracle(log_dir: str, name: str) -> pa.Table | None:
  """Reads one oracle table, or None when the log has no oracle."""
  path = table_path(log_dir, os.path.join(S.ORACLE_DIR, name))
  return read_table(path) if os.path.exists(path) else None


def log_table_files(log_dir: str) -> list[str]:
  """Every Parquet file of a log's tables (events, side tables, oracle), sorted: what a
  cache of results computed from the log depends on."""
  names = [S.EVENTS_FILE, *S.SIDE_TABLES] + [os.path.join(S.ORACLE_DIR, n)
                                              for n in S.ORACLE_TABLES]
  out = []
  for name in names:
    path = table_path(log_dir, name)
    if os.path.exists(path):
      out += table_files(path)
  return out
