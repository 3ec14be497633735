"""Reading and writing event-log folders (see ``schema``), atomically.

``write_log`` writes every table into a temporary sibling folder and renames it into place
only when all of them are written, so a failure leaves the target untouched (or absent).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from mcjax.eventlog import schema as S


def _conform(table: pa.Table, target: pa.Schema, where: str) -> pa.Table:
  missing = [n for n in target.names if n not in table.column_names]
  if missing:
    raise ValueError(f"{where}: missing column(s) {missing}")
  return table.select(target.names).cast(target)


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
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists (pass overwrite=True to replace it)")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp makes it private; a log folder is meant to be shared
  try:
    pq.write_table(_conform(events, S.EVENT_SCHEMA, S.EVENTS_FILE),
                   os.path.join(tmp, S.EVENTS_FILE))
    for name, schema in S.SIDE_TABLES.items():
      if name not in side:
        raise ValueError(f"side table {name} not given")
      pq.write_table(_conform(side[name], schema, name), os.path.join(tmp, name))
    if oracle:
      os.makedirs(os.path.join(tmp, S.ORACLE_DIR))
      for name, table in oracle.items():
        if name not in S.ORACLE_TABLES:
          raise ValueError(f"unknown oracle table {name}; expected {sorted(S.ORACLE_TABLES)}")
        pq.write_table(_conform(table, S.ORACLE_TABLES[name], f"{S.ORACLE_DIR}/{name}"),
                       os.path.join(tmp, S.ORACLE_DIR, name))
    for name, data in (extra_files or {}).items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(data)
    if os.path.exists(out_dir):
      old = out_dir + ".old"
      shutil.rmtree(old, ignore_errors=True)
      os.rename(out_dir, old)
      os.rename(tmp, out_dir)
      shutil.rmtree(old)
    else:
      os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def read_events(log_dir: str, columns: list[str] | None = None) -> pa.Table:
  """Reads ``events.parquet`` of a log folder."""
  return pq.read_table(os.path.join(log_dir, S.EVENTS_FILE), columns=columns)


def read_side(log_dir: str, name: str) -> pa.Table:
  """Reads one side table (a key of ``schema.SIDE_TABLES``) of a log folder."""
  return pq.read_table(os.path.join(log_dir, name))


def read_oracle(log_dir: str, name: str) -> pa.Table | None:
  """Reads one oracle table, or None when the log has no oracle."""
  path = os.path.join(log_dir, S.ORACLE_DIR, name)
  return pq.read_table(path) if os.path.exists(path) else None
