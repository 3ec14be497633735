"""no_crowd: real-time samples without the real-time crowd features.

Isolates Moment's crowd features: the only difference from `full` is `model.use_crowd`.

Command:  python -m launch.train --config=mcjax/configs/no_crowd.py --workdir=runs/no_crowd
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.7211 ± 0.0125 on the `small` world, 3 seeds (+0.0018 ± 0.0049 vs `full`)
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_crowd"
  c.model.use_crowd = False
  return c
