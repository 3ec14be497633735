"""no_first_only: real-time samples, but a fired label stays positive in every later sample.

Command:  python -m launch.train --config=mcjax/configs/no_first_only.py --workdir=runs/no_first_only
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.7333 ± 0.0059 but CTR logloss 0.6303 ± 0.0101 (`full`: 0.5159) on the
          `small` world, 3 seeds: repeated positives inflate probabilities
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_first_only"
  c.moment.first_only = False
  return c
