"""fast_slow: the delayed-label baseline with a 5 min fast sample and a 1 h slow correction.

Command:  python -m launch.train --config=mcjax/configs/fast_slow.py --workdir=runs/fast_slow
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.7131 ± 0.0100 on the `small` world, 3 seeds (-0.0062 ± 0.0122 vs `full`)
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "fast_slow"
  c.moment.mode = "fast_slow"
  return c
