"""Shared test set-up: CPU only, 8 fake host devices for mesh tests, XLA's cheap CPU code
generation (``xla_flags.FAST_COMPILE``), absl flags parsed; and how ``pytest -n N`` (make
test) shares the tests out among its workers (below)."""

import os

import pytest

from xla_flags import with_fast_compile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ["XLA_FLAGS"] = with_fast_compile(flags)

from absl import flags as absl_flags  # noqa: E402

# Grain workers and library code read absl flags; pytest never parses them.
absl_flags.FLAGS.mark_as_parsed()


# pytest-xdist's default (``--dist load``) hands tests out one at a time, so a module's tests
# land on every worker and each worker builds the module's fixtures (compiled models, trained
# states) and the trainer tests' session runs (``trainer_fixtures``: the small world, the
# reference runs) again. Instead a whole module goes to one worker, the modules that share
# the trainer session all to the same one, the longest work first so that the last units
# handed out are short ones.
TRAINER_SESSION_MODULES = (  # one unit, in this order (the short refusals last)
    "test_trainer_mesh.py", "test_multiprocess_trainer.py", "test_trainer_protocols.py",
    "test_trainer_resume.py", "test_trainer_rundir.py")
SESSION_UNIT = "trainer session"
LONGEST_FIRST = (  # the other modules that take longest (a few seconds up), longest first
    "test_realtime.py", "test_multiprocess_realtime.py", "test_reliability.py", "test_run.py",
    "test_stream_run.py",
    "test_tpu_compile.py",
    "test_stream_engine.py", "test_configs.py", "test_stream_redis.py", "test_model_dtype.py",
    "test_serve.py", "test_gsu_approx.py", "test_bench.py",
    "test_moment_beam.py", "test_train_real_model.py", "test_ablation.py", "test_api.py",
    "test_model.py", "test_calibration_guard.py", "test_comms.py", "test_model_reference.py",
    "test_model_small_world.py", "test_losses.py", "test_log_door.py",
    "test_trainer_config.py", "test_train_serve.py")
_RANK = {name: i for i, name in enumerate(TRAINER_SESSION_MODULES + LONGEST_FIRST)}


def pytest_collection_modifyitems(items):
  """The units' order (modules not listed after the listed ones, in name order); a module's
  own tests keep their order."""
  items.sort(key=lambda item: _RANK.get(item.path.name, len(_RANK)))


def _unit(nodeid: str) -> str:
  module = nodeid.split("::", 1)[0]
  return SESSION_UNIT if os.path.basename(module) in TRAINER_SESSION_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """``--dist load`` (the default of ``-n``) becomes xdist's load-scope scheduling with the
  units above, handed out in collection order; other ``--dist`` values are left alone."""
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import LoadScopeScheduling

  class ModuleUnits(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      return _unit(nodeid)

  config.option.loadscopereorder = False  # keep the collection order (longest first)
  return ModuleUnits(config, log)


@pytest.fixture(scope="session")
def redis_server():
  """A real redis-server (the test extra bundles it) on a free port of 127.0.0.1, without
  persistence, for the whole session of this worker; ``.url(stream)`` addresses a stream on
  it. A server that cannot start fails the tests that use it (never a skip)."""
  from mcjax.stream.redis_server import RedisServer
  with RedisServer() as server:
    yield server
