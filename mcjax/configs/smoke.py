"""smoke: the `full` setup on the `small` world with a tiny model, for tests and CI.

Command:  python -m launch.train --config=mcjax/configs/smoke.py --workdir=/tmp/smoke
Hardware: any CPU; about a minute.
Expected: finishes and writes metrics.json; the numbers are not meaningful at this size.
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "smoke"
  c.data.preset = "small"
  c.moment.sv_hist_len = 32
  c.moment.lv_hist_len = 16
  c.train.batch_size = 64
  c.train.eval_batch_size = 256
  c.train.window_min = 60.0
  c.train.checkpoint_every_steps = 50
  return c
