"""full: Moment (30 s real-time samples, first-only masks, crowd features) + Cross.

Command:  python -m launch.train --config=mcjax/configs/full.py --workdir=runs/full
Hardware: any; sized for a 2-core CPU (one online pass over the default world).
Expected: the best CTR AUC of the ablation family; `make run` trains this config.
"""

from mcjax.config import default_config


def get_config():
  return default_config()
