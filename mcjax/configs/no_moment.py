"""no_moment: slow labels only (one sample per exposure at its close); crowd features on.

Isolates Moment's sample stream: the only difference from `full` is `moment.mode`
(`realtime` 30 s samples with first-only masks -> `on_close`). The real-time crowd features
stay on (their effect is `full` vs `no_crowd`).

Command:  python -m launch.train --config=mcjax/configs/no_moment.py --workdir=runs/no_moment
Hardware: any; sized for a 2-core CPU.
Expected: CTR AUC 0.7137 ± 0.0326 on the `small` world, 3 seeds (-0.0056 ± 0.0284 vs `full`)
          (experiments/RESULTS.md, "CTR").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "no_moment"
  c.moment.mode = "on_close"
  return c
