"""Trains and evaluates one named config: online (prequential), offline or offline_tvt.

    python -m launch.train --config=mcjax/configs/full.py --workdir=runs/full
    python -m launch.train --config=mcjax/configs/smoke.py --workdir=/tmp/smoke \
        --config.train.batch_size=128 --config.data.log_dir=MY_LOG_DIR
    python -m launch.train --config=mcjax/configs/full.py --workdir=runs/tvt \
        --samples=SAMPLES_DIR --config.train.mode=offline_tvt --config.train.epochs=3

Without ``--config.data.log_dir`` (an event-log folder, validated first unless --novalidate)
or --samples it trains on the simulated world of ``config.data`` (made in the workdir when
missing). Writes ``WORKDIR/metrics.json``, TensorBoard events and Orbax
checkpoints (``mcjax.train.rundir``); a rerun resumes from the latest checkpoint and refuses
another config or other data unless --overwrite (deletes that run's files, never the data).
Several processes (``--coordinator``/``--num_processes``/``--process_id``, or a cluster
launcher's environment): ``jax.distributed.initialize`` first. A run that cannot go on (workdir
in use or another run's, training diverged) exits non-zero with one ``FATAL`` line.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

import launch
from mcjax import configs

_CONFIG = launch.define_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/smoke.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics, checkpoints and caches go.",
                               required=True)
_VALIDATE = flags.DEFINE_bool("validate", True, "Validate the --config.data.log_dir log first "
                              "(as launch.validate); --novalidate skips it.")
_SAMPLES = flags.DEFINE_string("samples", None, "A samples folder (launch.build_samples) to "
                               "train on as it is, instead of building one from the log.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the workdir's run files first "
                               "(checkpoints, predictions, metrics; never its data).")
_MEMORY_LIMIT = flags.DEFINE_float("memory_limit_gb", None, "Memory the run may use, in GB "
                                   "(default: this machine's available memory; 0: no check).")
_INITIALIZE = launch.define_distributed_flags()  # --coordinator, --num_processes, ...


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep the progress bar readable (orbax, tfds)
  cfg = _CONFIG.value
  if cfg.data.log_dir and _VALIDATE.value:
    _refuse_bad_log(cfg.data.log_dir)
  from mcjax import config as mcconfig
  from mcjax.eventlog import files
  from mcjax.train import RunError, data, loop
  from mcjax.runtime import mesh as mesh_lib
  _refuse_bad_config(mcconfig.validate, cfg)  # before any device work
  _INITIALIZE()
  _refuse_bad_config(mesh_lib.check_layout, cfg)  # needs the device count only
  _refuse_too_big(cfg)  # before any data or device work
  try:
    samples = _SAMPLES.value or data.prepare(cfg, _WORKDIR.value)
    result = loop.train_and_evaluate(cfg, _WORKDIR.value, samples,
                                     overwrite=_OVERWRITE.value)
  except (RunError, FileNotFoundError, files.OverlapError, files.CorruptFileError) as e:
    sys.exit(f"FATAL {e}")  # one line: what to change
  ctr = result["overall"].get("ctr", {})
  print(f"{cfg.name}: CTR AUC {ctr.get('auc')}, GAUC {ctr.get('gauc')} -> "
        f"{_WORKDIR.value}/metrics.json")


def _refuse_too_big(cfg) -> None:
  """One FATAL line when the config's estimated memory exceeds the machine's (or the limit)."""
  from mcjax.runtime import memory
  limit = _MEMORY_LIMIT.value
  if limit is not None and limit <= 0:
    return
  try:
    memory.check(cfg, None if limit is None else int(limit * 2**30))
  except memory.MemoryFitError as e:
    sys.exit(f"FATAL {e}")


def _refuse_bad_log(log_dir: str) -> None:  # the log's door: the first broken rule exits
  from mcjax.eventlog import validate
  try:
    validate.check_log(log_dir)
  except validate.LogValidationError as e:
    sys.exit(f"FATAL invalid --config.data.log_dir log: {e}")


def _refuse_bad_config(check, cfg) -> None:
  try:  # a ValueError of the check: one FATAL line
    check(cfg)
  except ValueError as e:
    sys.exit(f"FATAL invalid config: {e}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an override of a key the config lacks exits naming the flag."""
  try:
    rest = flags.FLAGS(argv)
    launch.check_config_files(argv)
    return rest
  except (AttributeError, KeyError) as e:  # what config_flags raises for an unknown key
    launch.unknown_key(e, argv)
  except launch.FLAG_ERRORS as e:  # a bad value, a missing or broken config file
    launch.flag_error(e)


if __name__ == "__main__":
  app.run(launch.guarded(main), flags_parser=_parse_flags)
