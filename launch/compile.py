"""Compiles a config's train and evaluation steps and its scorer's forward for a TPU slice, on a
machine without one.

    python -m launch.compile --config=mcjax/configs/full.py --topology=v5p-8
    python -m launch.compile --config=mcjax/configs/full.py --topology=v5p:4x8x8 \
        --layout=64x4 --batch_per_chip=1024 --config.model.embedding.vocab.sv_item=100000000
    python -m launch.compile --topology=v5e-256 --num_slices=2 --save=runs/step.aot

The steps are lowered from abstract shapes (nothing is allocated) over a mesh of the slice's
devices, as libtpu describes them, and compiled by the TPU compiler. It prints, per chip:
the HBM the compiled programs need (arguments, outputs, the part of the outputs written into
donated arguments, temporaries, total, against the chip's HBM), the collectives of the train
step (kind, payload and wire bytes, the jax op that made them), FLOPs and compile times.

Exit status 1 with one line naming the largest per-chip buffers when a step does not fit the
chip's HBM (checked on the arguments before compiling, then on the compiled program).
``--save`` writes the compiled executables (``jax.experimental.serialize_executable``) for a
job on that slice to load instead of compiling (``mcjax.aot.executable.load``).

Topology names: ``v5p-N`` and ``v4-N`` count TensorCores (2 per chip), ``v5e-N`` /
``v6e-N`` count chips, as the Cloud TPU docs name slices; ``v5p:8x8x4`` gives the chip grid;
``local`` compiles for this machine's own accelerators (a GPU: ``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import json
import os
import sys

if "--topology=local" not in sys.argv:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # trace on the host; TPU code from libtpu

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mcjax import configs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path("full"), "A config file (e.g. mcjax/configs/smoke.py).")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-8", "TPU slice: v5p-256, v5e-16, "
                                "v5p:8x8x4, ... (see the module doc).")
_LAYOUT = flags.DEFINE_string("layout", "-1x1", "data x model mesh (-1: the rest).")
_BATCH = flags.DEFINE_integer("batch_per_chip", 1024, "Examples per chip per step.")
_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices (multislice: the data axis spans "
                               "them).")
_STEPS = flags.DEFINE_list("steps", ["train", "eval", "score"], "Steps to compile: train, "
                           "eval, score (the serving Scorer's forward on the same rows).")
_SAVE = flags.DEFINE_string("save", None, "Write the compiled executables here.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the numbers here (JSON).")


def _fail(line: str) -> None:
  print(line, file=sys.stderr)
  sys.exit(1)


def _layout(text: str) -> tuple[int, int]:
  try:
    d, m = (int(x) for x in text.lower().split("x"))
  except ValueError:
    _fail(f"--layout={text}: give DATAxMODEL, e.g. 16x4 or -1x1")
  return d, m


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mcjax import config as mcconfig
  from mcjax.aot import compile_report

  cfg = _CONFIG.value
  try:
    mcconfig.validate(cfg)
    result = compile_report.run(cfg, _TOPOLOGY.value, _layout(_LAYOUT.value), _BATCH.value,
                                num_slices=_SLICES.value, steps=_STEPS.value,
                                save=_SAVE.value, out=print)
  except (ValueError, compile_report.DoesNotFit) as e:
    _fail(str(e).splitlines()[0])
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
