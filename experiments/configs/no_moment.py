"""no_moment: delayed labels (one sample per exposure at its close) and no crowd features.

Command:  python -m launch.train --config=experiments/configs/no_moment.py --workdir=runs/no_moment
Hardware: any; sized for a 2-core CPU.
Expected: below `full` on CTR AUC, most of all inside highlight moments.
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_moment"
  c.moment.mode = "on_close"
  c.model.use_crowd = False
  return c
