"""no_first_only: real-time samples, but a fired label stays positive in every later sample.

Command:  python -m launch.train --config=mcjax/configs/no_first_only.py --workdir=runs/no_first_only
Hardware: any; sized for a 2-core CPU.
Expected: below `full`: repeated positives over-count long watches and inflate probabilities.
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_first_only"
  c.moment.first_only = False
  return c
