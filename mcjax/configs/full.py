"""full: Moment (30 s real-time samples, first-only masks, crowd features) + Cross.

Command:  python -m launch.train --config=mcjax/configs/full.py --workdir=runs/full
Hardware: any; sized for a 2-core CPU (one online pass over the default world).
Expected: CTR AUC 0.7194 ± 0.0172 on the `small` world, 3 seeds; `make run` trains this
          config (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  return default_config()
