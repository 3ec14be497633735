"""baseline: slow labels (on_close), no crowd features, no short-video history (no Cross).

Command:  python -m launch.train --config=mcjax/configs/baseline.py --workdir=runs/baseline
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.6593 ± 0.0240 on the `small` world, 3 seeds, the lowest of the family
          (-0.0601 vs `full`) and the zero of the oracle headroom share
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "baseline"
  c.moment.mode = "on_close"
  c.model.use_crowd = False
  c.model.use_sv_history = False
  c.loss.contrastive_weight = 0.0
  return c
