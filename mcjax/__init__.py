"""mcjax: Moment&Cross in JAX/Flax.

The public API, five calls from a simulated world to a ranked request (README, "In Python";
tests/test_api.py runs that example)::

  world = mcjax.generate_world("/tmp/mc/world", preset="small")
  cfg = mcjax.load_config("tiny", {"data.log_dir": world})
  metrics = mcjax.train_and_evaluate(cfg, "/tmp/mc/run")
  scorer = mcjax.scorer("/tmp/mc/run", log=world)
  ranking = scorer.score(user_id=1, ts_ms=scorer.requests.time_range[1], live_ids=[1, 2, 3])

``build_samples`` runs the Moment engine on any event log (``train_and_evaluate`` calls it
itself when the config's samples are not cached). Every function imports its stack when called, so
``import mcjax`` stays cheap (launchers read ``mcjax.configs`` before importing JAX).
"""

from __future__ import annotations

from mcjax.version import __version__

__all__ = ["generate_world", "build_samples", "load_config", "train_and_evaluate", "scorer"]


def generate_world(out_dir: str, preset: str = "default", seed: int = 0, **sizes) -> str:
  """Simulates a world (``mcjax.sim.config.PRESETS``; ``sizes`` override its size fields) and
  writes its event log to ``out_dir``; returns ``out_dir``."""
  from mcjax.sim import world
  return world.build(out_dir, preset, seed, **sizes)


def build_samples(log_dir: str, out_dir: str, *, overwrite: bool = False, **moment) -> dict:
  """Runs the Moment engine on the event log ``log_dir`` (validated first) and writes the
  samples folder ``out_dir``; ``moment``: ``MomentConfig`` fields (``mode="on_close"``, ...).
  Returns the build info (counts per kind, throughput)."""
  from mcjax.moment.config import MomentConfig
  from mcjax.samples.build import build_samples_dir
  return build_samples_dir(log_dir, out_dir, MomentConfig(**moment).validate(),
                           overwrite=overwrite)


def load_config(name: str, overrides: dict | None = None):
  """A named config (``mcjax/configs/<name>.py``: "full", "smoke", "tiny", the ablations) or a
  config file, with dotted-key ``overrides`` ({"train.batch_size": 128}); see
  ``mcjax.config``."""
  from mcjax import config
  return config.load_config(name, overrides)


def train_and_evaluate(cfg, workdir: str, samples_dir: str | None = None, *,
                       overwrite: bool = False) -> dict:
  """Trains and evaluates ``cfg`` into ``workdir`` (resuming a stopped run) and returns its
  metrics (also ``workdir/metrics.json``). (Not ``mcjax.train``: that name is the trainer's
  subpackage, which importing it binds on this package.) Without ``samples_dir`` the samples of
  ``cfg.data`` (its log, or its simulated world) are built into the workdir when missing."""
  from mcjax import config
  from mcjax.train import data, loop
  config.validate(cfg)
  samples_dir = samples_dir or data.prepare(cfg, workdir)
  return loop.train_and_evaluate(cfg, workdir, samples_dir, overwrite=overwrite)


def scorer(workdir: str, log=None):
  """The trained run's ``mcjax.serve.Scorer`` (latest checkpoint); with ``log`` (the event
  log the features come from) ``scorer.score(user_id, ts_ms, live_ids)`` ranks a request."""
  from mcjax.serve.scorer import Scorer
  return Scorer.from_workdir(workdir, log=log)
