"""Command-line programs. ``run(main)`` is how every launcher starts (``app.run`` with one
handler): a failure the user can cause -- a bad flag or flag value, a bad config file, a
missing file, a read-only or full disk, an output that would clobber something, a corrupt or
invalid input (the project's own ``ValueError`` subclasses) -- is one line on stderr,
``ERROR: <what>: <why>``, and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys

from absl import app, flags

# errno of OSErrors the user's machine causes (a full or read-only disk, no permission)
_DISK = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
         errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
         errno.EDQUOT: "disk quota exceeded"}
_MAX_CHARS = 600  # an error that quotes a huge cell is cut, not echoed whole


def one_line(text: str) -> str:
  """``text`` on one line, at most ``_MAX_CHARS`` characters."""
  text = " ".join(str(text).split())
  return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS - 3] + "..."


def user_error(e: BaseException) -> str | None:
  """The one line for an error the user caused; None for a bug (a traceback is due)."""
  if isinstance(e, (app.UsageError, flags.Error)):
    return str(e)
  if isinstance(e, OSError):
    where = e.filename or ""
    if e.errno in _DISK:
      return f"cannot write {where}: {_DISK[e.errno]}" if where else str(e)
    if isinstance(e, (FileNotFoundError, FileExistsError, NotADirectoryError,
                      IsADirectoryError)):
      if e.filename and e.strerror:
        return f"{e.filename}: {e.strerror.lower()}"
      return str(e)
    return None
  if isinstance(e, ValueError) and (type(e).__module__.split(".")[0] in ("mcjax", "launch")
                                     or _raised_by_project(e)):
    return str(e)  # the project's own checks: LogValidationError, SourceError, IdError, ...
  return None


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("mcjax", "launch"))


def _raised_by_project(e: BaseException) -> bool:
  """Whether ``e`` was raised by a ``raise`` in mcjax/ or launch/ (a deliberate check), not
  inside a library (where a ValueError means the project passed it something wrong)."""
  tb = e.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OURS)


def guarded(main):
  """``main`` with the one-line handler (see the module docstring)."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      line = user_error(e)
      if line is None:
        raise
      print(f"ERROR: {one_line(line)}", file=sys.stderr)
      sys.exit(1)

  return wrapped


def parse_flags(argv, known_only: bool = False):
  """absl's flag parsing with a bad flag, value or config file as one line."""
  try:
    rest = flags.FLAGS(argv, known_only=known_only)
  except FLAG_ERRORS as e:
    flag_error(e)
  check_config_files(argv)
  return rest


def check_config_files(argv) -> None:
  """Exits with one line when a config-file flag's file could not be loaded (config_flags
  defers that error to the first use of the config, deep inside the program)."""
  for name, flag in flags.FLAGS._flags().items():  # pylint: disable=protected-access
    if type(flag.value).__name__ != "_ErrorConfig":
      continue
    error = str(object.__getattribute__(flag.value, "_error"))
    why = re.findall(r"\[Errno \d+\] ([^:\n]+)", error) or [error.strip().splitlines()[-1]]
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    print(f"ERROR: --{name}={given[-1] if given else flag.default}: cannot load the config "
          f"file ({one_line(why[-1]).lower()})", file=sys.stderr)
    sys.exit(1)


# what absl and config_flags raise for a bad flag, flag value or config file
FLAG_ERRORS = (flags.Error, OSError, ValueError, KeyError, AttributeError, TypeError,
               SyntaxError)


def flag_error(e: BaseException) -> None:
  """Exits with the one line of a flag-parsing error (``FLAG_ERRORS``)."""
  what = e.filename if isinstance(e, OSError) and e.filename else ""
  why = e.strerror.lower() if isinstance(e, OSError) and e.strerror else str(e)
  print(f"ERROR: {one_line(f'{what}: {why}' if what else why)}", file=sys.stderr)
  sys.exit(1)


def unknown_key(e: BaseException, argv) -> None:
  """Exits with one line naming the ``--config.<key>`` override that the config lacks (what
  config_flags raises as a KeyError or AttributeError)."""
  missing = str(e).strip("'\"")
  given = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  named = [a for a in given if missing in a.split(".")] or given
  files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")] or ["the default"]
  sys.exit(f"FATAL unknown config key: {', '.join(named)} ({missing!r} is not in the config "
           f"of {files[-1]})")


def define_config_file(name: str, default: str, help_text: str):
  """``config_flags.DEFINE_config_file`` whose ``--<name>.<key>=`` overrides are checked
  as it is defined (config_flags applies them to the default config right there when no
  ``--<name>=`` is given): an unknown key is one line, not a traceback at import."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_file(name, default, help_text)
  except (AttributeError, KeyError) as e:
    unknown_key(e, sys.argv)
  except FLAG_ERRORS as e:
    flag_error(e)


def define_distributed_flags():
  """``--coordinator``, ``--num_processes`` and ``--process_id`` (the multi-process launchers);
  returns ``initialize()``: ``mcjax.distributed.initialize`` with their values (nothing with
  one process)."""
  coordinator = flags.DEFINE_string("coordinator", None,
                                    "host:port of process 0 (multi-process).")
  num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes.")
  process_id = flags.DEFINE_integer("process_id", None, "This process's index.")

  def initialize() -> None:
    from mcjax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(coordinator.value, num_processes.value, process_id.value)

  return initialize


def run(main, known_only: bool = False) -> None:
  """``app.run(main)`` with the one-line handler and flag parser."""
  app.run(guarded(main), flags_parser=functools.partial(parse_flags, known_only=known_only))
