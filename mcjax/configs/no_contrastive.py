"""no_contrastive: Cross search over both histories, without the contrastive loss.

Command:  python -m launch.train --config=mcjax/configs/no_contrastive.py --workdir=runs/no_contrastive
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.7204 ± 0.0172 on the `small` world, 3 seeds (+0.0010 ± 0.0033 vs `full`)
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_contrastive"
  c.loss.contrastive_weight = 0.0
  return c
