"""full_bf16: `full` with bfloat16 activations and matmuls (float32 parameters and losses).

The only difference from `full` is `model.compute_dtype = "bfloat16"`; parameters, tables,
optimizer state, logits, losses and metrics stay float32.

Command:  python -m launch.train --config=mcjax/configs/full_bf16.py --workdir=runs/full_bf16
Hardware: any; on a CPU it is no faster than `full` (benchmarks/RESULTS.md), on GPU/TPU the
          matmuls run at the bf16 rate.
Expected: CTR AUC within 0.002 of `full` (experiments/RESULTS.md, bf16 section).
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "full_bf16"
  c.model.compute_dtype = "bfloat16"
  return c
