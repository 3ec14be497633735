"""no_cross: no short-video history and no contrastive alignment (live domain only).

Command:  python -m launch.train --config=mcjax/configs/no_cross.py --workdir=runs/no_cross
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.6708 ± 0.0044 on the `small` world, 3 seeds (-0.0485 ± 0.0158 vs `full`)
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_cross"
  c.model.use_sv_history = False
  c.loss.contrastive_weight = 0.0
  return c
