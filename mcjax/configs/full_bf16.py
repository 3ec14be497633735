"""full_bf16: `full` with bfloat16 activations and matmuls (float32 parameters and losses).

The only difference from `full` is `model.compute_dtype = "bfloat16"`; parameters, tables,
optimizer state, logits, losses and metrics stay float32.

Command:  python -m launch.train --config=mcjax/configs/full_bf16.py --workdir=runs/full_bf16
Hardware: any; on a CPU it is no faster than `full` (benchmarks/RESULTS.md), on GPU/TPU the
          matmuls run at the bf16 rate.
Expected: CTR AUC 0.7667 ± 0.0054 on the `default` world, 3 seeds, +0.0000 ± 0.0004 vs `full`
          with `full`'s earlier defaults
          (benchmarks/RESULTS.md, "Quality: `full` fp32 vs bf16").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "full_bf16"
  c.model.compute_dtype = "bfloat16"
  return c
