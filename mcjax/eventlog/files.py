"""Safe folder writes shared by the log, sample and history writers.

* ``check_apart``: an output may not be, contain, or lie inside an input (compared after
  resolving symlinks), so ``--overwrite`` can never delete what a command reads.
* ``check_replaceable``: ``--overwrite`` replaces only a folder of the expected kind (an
  event log, a samples folder), never a file or an unrelated folder.
* ``check_output``: the one guard every writer calls before any work (``convert``,
  ``build_samples``, ``generate``, ``score``, ``export``, the trainer's sample cache, and any
  future writer): ``check_apart`` against every input, an existing output refused without
  ``--overwrite``, and with it replaced only when it is a folder (or file) of the same kind.
* ``staged_file(target)``: a path inside a staging folder to write one file to, renamed onto
  ``target`` when the block ends without an error (a killed writer leaves nothing at
  ``target``; its staging folder is removed by the next writer).
* ``staging(target)``: a hidden sibling ``.tmp-<name>-XXXXXXXX`` to write into, created with
  the normal permissions (the umask's, not mkdtemp's 0700), held under an ``flock`` on the
  sibling file ``.tmp-<name>-XXXXXXXX.lock`` while in use. Entering it first removes the
  unlocked staging folders of ``target`` that a killed run left behind; a live writer's lock
  keeps its own folder safe, on this host and on NFS (Linux maps flock to POSIX locks there).
* ``replace_dir(built, target)``: renames a fully written folder into place, moving an existing
  target aside into a staging folder first and deleting it only after the new one is in.
* ``atomic_write(path, data)``: one file, written beside and renamed into place, so readers
  see the old content or the new, never a part (run files, reports).
* ``write_manifest`` / ``verify_manifest``: ``checksums.json``, the size and zlib crc32 of
  every file of a folder, written after the files and checked when the folder is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator

from absl import logging


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes ``path`` so that readers see the old content or the new, never a part."""
  tmp = f"{path}.tmp"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  os.replace(tmp, path)

MANIFEST = "checksums.json"
_CHUNK = 1 << 22  # bytes read at a time while checksumming
_ORPHAN_LOCK_AGE_S = 600


class OverlapError(ValueError):
  """An output path is, contains, or lies inside an input path."""


class CorruptFileError(ValueError):
  """A file differs from its checksum manifest, or the manifest is missing."""


# ---------------------------------------------------------------------------- paths

def _real(path: str) -> str:
  return os.path.realpath(os.path.abspath(os.fspath(path)))


def _inside(child: str, parent: str) -> bool:
  return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_apart(reads: dict[str, str], writes: dict[str, str]) -> None:
  """Refuses an output that is, contains or lies inside an input.

  Args:
    reads: label (e.g. "--events") -> a path the command reads.
    writes: label (e.g. "--out") -> a path the command writes (or replaces).
  """
  for out_label, out in writes.items():
    for in_label, src in reads.items():
      o, i = _real(out), _real(src)
      if o == i:
        how = "is the same folder as" if os.path.isdir(o) else "is the same file as"
      elif _inside(o, i):
        how = "lies inside"
      elif _inside(i, o):
        how = "contains"
      else:
        continue
      raise OverlapError(f"{out_label}={out} {how} {in_label}={src}: an output may not "
                         "overlap an input (choose another output folder)")


def check_output(out: str, label: str, *, reads: dict[str, str | None], overwrite: bool,
                 kind: str, marks: tuple[str, ...] | None = None,
                 magic: bytes | None = None) -> None:
  """Refuses, before any work, an output that would lose or corrupt something.

  Args:
    out: the output path.
    label: its flag, for the messages (e.g. "--out").
    reads: label -> every path the command reads (None values are skipped).
    overwrite: whether an existing ``out`` may be replaced.
    kind: what the output is, for the messages (e.g. "an export folder").
    marks: for a folder output: names one of which a folder of this kind holds.
    magic: for a file output: the bytes a file of this kind starts with (e.g. b"PAR1").
  Raises:
    OverlapError, FileExistsError.
  """
  check_apart({k: v for k, v in reads.items() if v is not None}, {label: out})
  if not os.path.lexists(out):
    parent = os.path.dirname(_abs(out))
    if os.path.lexists(parent) and not os.path.isdir(parent):
      raise NotADirectoryError(f"{label}={out}: {parent} is a file, not a folder")
    return
  if not overwrite:
    raise FileExistsError(f"{label}={out} already exists (pass --overwrite to replace it)")
  if marks is not None:
    check_replaceable(out, label, marks, kind)
    return
  if os.path.isdir(out) or not os.path.isfile(out):
    raise FileExistsError(f"{label}={out} is a folder, not {kind}; --overwrite only replaces "
                          f"{kind} (choose another {label})")
  if magic is not None:
    with open(out, "rb") as f:
      head = f.read(len(magic))
    if head != magic:
      raise FileExistsError(f"{label}={out} is not {kind}; --overwrite only replaces {kind} "
                            f"(choose another {label})")


def check_replaceable(path: str, label: str, marks: tuple[str, ...], kind: str) -> None:
  """Refuses to replace ``path`` unless it is a folder holding one of ``marks`` (or empty).

  Args:
    path: the existing output path (``--overwrite`` would replace it).
    label: its flag, for the message (e.g. "--out").
    marks: names, one of which a folder of the expected kind holds (e.g. "events.parquet").
    kind: what such a folder is, for the message (e.g. "an event-log folder").
  """
  if not os.path.lexists(path):
    return
  if not os.path.isdir(path):
    raise FileExistsError(f"{label}={path} is a file, not {kind}; --overwrite only replaces "
                          f"{kind} (remove the file or choose another {label})")
  names = os.listdir(path)
  if names and not any(m in names for m in marks):
    raise FileExistsError(f"{label}={path} is not {kind} (it holds none of {list(marks)}); "
                          f"--overwrite only replaces {kind} (choose another {label})")


# ---------------------------------------------------------------------------- staging

def _try_lock(path: str):
  """An open file holding an exclusive flock on ``path``, or None when another holds it."""
  try:
    f = open(path, "a")
  except OSError:
    return None
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.close()
    return None
  return f


def clean_stale(target: str) -> list[str]:
  """Removes the staging folders of ``target`` whose writer is gone; returns their paths.

  A staging folder is named ``.tmp-<name>-`` and tempfile's 8 random characters; it is stale
  when no process holds the flock of its ``.lock`` sibling (or, for folders of older versions,
  when it has no ``.lock`` sibling at all). Other names are never touched.
  """
  parent, base = os.path.dirname(_abs(target)), os.path.basename(_abs(target))
  ours = re.compile(rf"\.tmp-{re.escape(base)}-[a-z0-9_]{{8}}(\.lock)?")  # tempfile's names
  try:
    names = [n for n in os.listdir(parent) if ours.fullmatch(n)]
  except OSError:
    return []
  removed = []
  for name in sorted(names):
    if name.endswith(".lock"):
      continue
    path = os.path.join(parent, name)
    lock = _try_lock(path + ".lock")
    if lock is None:
      continue  # a live writer (or an unreadable lock): leave it alone
    try:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
      logging.warning("removed %s, the staging folder of a killed run", path)
      _remove(path + ".lock")
    finally:
      lock.close()
  for name in names:  # old locks whose folder is gone (a writer killed between two removals;
    # a young one may belong to a writer that has not locked or created its folder yet)
    if name.endswith(".lock"):
      path = os.path.join(parent, name)
      if not os.path.exists(path[:-len(".lock")]) and _age_s(path) > _ORPHAN_LOCK_AGE_S:
        lock = _try_lock(path)
        if lock is not None:
          _remove(path)
          lock.close()
  return removed


def _age_s(path: str) -> float:
  try:
    return time.time() - os.path.getmtime(path)
  except OSError:
    return 0.0


def _abs(path: str) -> str:
  return os.path.abspath(os.fspath(path)).rstrip(os.sep) or os.sep


def _remove(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


@contextlib.contextmanager
def staging(target: str) -> Iterator[str]:
  """A fresh, locked, hidden sibling folder of ``target`` to write into; removed at exit.

  Stale staging folders of ``target`` (killed runs) are removed first. The folder gets the
  umask's permissions, so what is renamed from it into place is as readable as any folder.
  """
  target = _abs(target)
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  clean_stale(target)
  fd, lock_path = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(target)}-", suffix=".lock",
                                   dir=parent)
  lock = os.fdopen(fd, "a")
  fcntl.flock(lock, fcntl.LOCK_EX)
  path = lock_path[:-len(".lock")]
  try:
    os.mkdir(path)  # 0o777 less the umask (mkdtemp would make it 0o700)
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)
    _remove(lock_path)
    lock.close()


@contextlib.contextmanager
def staged_file(target: str) -> Iterator[str]:
  """A path to write one file to; renamed onto ``target`` (atomically replacing a file there)
  when the block ends without an error, removed otherwise."""
  with staging(target) as tmp:
    path = os.path.join(tmp, os.path.basename(_abs(target)))
    yield path
    os.replace(path, target)


def replace_dir(built: str, target: str, overwrite: bool) -> None:
  """Renames the complete folder ``built`` to ``target``; an existing target is replaced
  only with ``overwrite`` and is deleted only once the new folder is in place."""
  if not os.path.lexists(target):
    os.rename(built, target)
    return
  if not overwrite:
    raise FileExistsError(f"{target} appeared while it was being written (pass --overwrite "
                          "to replace it)")
  with staging(target) as old:
    os.rename(target, os.path.join(old, "replaced"))
    os.rename(built, target)


# ---------------------------------------------------------------------------- checksums

def file_crc32(path: str) -> int:
  """zlib crc32 of a file's bytes (about 1 GB/s)."""
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(folder: str, skip: tuple[str, ...]) -> list[str]:
  """Relative paths of the files under ``folder``, sorted, except ``skip`` subfolders/files."""
  out = []
  for root, dirs, files in os.walk(folder):
    rel = os.path.relpath(root, folder)
    rel = "" if rel == "." else rel
    dirs[:] = sorted(d for d in dirs if os.path.join(rel, d) not in skip)
    out += [os.path.join(rel, f) for f in files
            if os.path.join(rel, f) not in skip and f != MANIFEST]
  return sorted(out)


def write_manifest(folder: str, skip: tuple[str, ...] = ()) -> dict:
  """Writes ``folder/checksums.json``: {relative path: [size, crc32]} of every file under
  ``folder`` but ``skip`` (relative paths of files or subfolders with their own manifest)."""
  manifest = {rel: [os.path.getsize(os.path.join(folder, rel)),
                    file_crc32(os.path.join(folder, rel))] for rel in _files(folder, skip)}
  with open(os.path.join(folder, MANIFEST), "w") as f:
    json.dump({"algorithm": "zlib.crc32", "files": manifest}, f, indent=0, sort_keys=True)
  return manifest


def verify_manifest(folder: str, what: str, fix: str = "rebuild it") -> None:
  """Checks every file listed in ``folder/checksums.json`` (size, then crc32).

  Raises CorruptFileError naming the first missing, resized or changed file; ``what`` names
  the folder's kind for the message (e.g. "history store"), ``fix`` what to do about it.
  """
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except FileNotFoundError:
    raise CorruptFileError(f"{path}: missing checksum manifest of the {what} (written by an "
                           f"older mcjax, or the folder is incomplete): {fix}") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptFileError(f"{path}: unreadable checksum manifest of the {what} ({e}): "
                           f"{fix}") from e
  for rel, (size, crc) in sorted(files.items()):
    file = os.path.join(folder, rel)
    try:
      got_size = os.path.getsize(file)
    except OSError:
      raise CorruptFileError(f"{file}: missing file of the {what} (listed in {MANIFEST}): "
                             f"{fix}") from None
    if got_size != size:
      raise CorruptFileError(f"{file}: {got_size} bytes, {MANIFEST} says {size}: the {what} "
                             f"is truncated or corrupt: {fix}")
    got = file_crc32(file)
    if got != crc:
      raise CorruptFileError(f"{file}: crc32 {got:08x}, {MANIFEST} says {crc:08x}: the {what} "
                             f"is corrupt: {fix}")
