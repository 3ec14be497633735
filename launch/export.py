"""Exports a trained run's scorer as StableHLO, loadable by a process with only jax and numpy.

    python -m launch.export --workdir=runs/tiny --out=runs/tiny/export [--buckets=1,8,32,128,512]

Writes score_<B>.bin (one serialized function per bucket of B candidates), weights.npz (the
parameters, passed as explicit arguments), meta.json and load_exported.py (the standalone
loader); see ``mcjax.serve.export``. --out may not be, contain or lie inside the run's
config.json or ckpt/ (``--out=WORKDIR/export`` is fine); an
existing --out needs --overwrite and must be an export folder (it is replaced whole, so no
stale bucket file stays); the folder is written beside and renamed into place.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

import launch

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's folder (config.json, ckpt/).",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Folder to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out export folder "
                               "(never another folder or a file).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BUCKETS = flags.DEFINE_list("buckets", None, "Candidate counts to export (default: the "
                             "scorer's buckets).")
_PLATFORMS = flags.DEFINE_list("platforms", None, "Lowering platforms, e.g. cpu,cuda (default: "
                               "this machine's backend).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep the output readable (orbax logs every read)
  import jax

  from mcjax.serve import Scorer, export
  reads = {"--workdir's config.json": os.path.join(_WORKDIR.value, "config.json"),
           "--workdir's ckpt": os.path.join(_WORKDIR.value, "ckpt")}
  export.check_out(_OUT.value, _OVERWRITE.value, reads)
  try:
    buckets = [int(b) for b in _BUCKETS.value] if _BUCKETS.value else None
  except ValueError:
    sys.exit(f"FATAL --buckets={','.join(_BUCKETS.value)}: expected integers")
  if buckets and min(buckets) < 1:
    sys.exit(f"FATAL --buckets={','.join(_BUCKETS.value)}: expected counts >= 1")
  try:
    scorer = Scorer.from_workdir(_WORKDIR.value, step=_STEP.value, devices=jax.devices()[:1])
  except FileNotFoundError as e:
    sys.exit(f"FATAL {e}")
  out = export.export(scorer, _OUT.value, buckets=buckets, platforms=_PLATFORMS.value,
                      overwrite=_OVERWRITE.value, reads=reads)
  print(f"exported step {scorer.step} of {_WORKDIR.value} for buckets "
        f"{buckets or list(scorer.buckets)} -> {out}")


if __name__ == "__main__":
  launch.run(main)
