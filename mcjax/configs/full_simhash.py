"""full_simhash: `full` with the two-stage GSU's SimHash pre-score (ETA-style).

The only difference from `full` is `model.gsu.approx = "simhash"`: every short-video history
position is pre-scored without gradient by agreeing bits of 32-bit SimHash signatures (item +
author), the best `model.gsu.candidates` (64) are kept, and the exact soft GSU picks its top-k
among them (`mcjax/model/gsu.py`). With histories no longer than the candidates nothing is cut,
so compare it with `full` on long histories.

Command:  python -m experiments.ablation --nopeer --configs=full,full_simhash \
              --config.moment.sv_hist_len=256 --workdir=runs/gsu_default
Hardware: any; its step cost hardly grows with the history (benchmarks/RESULTS.md, "The paper's
          history length at speed").
Expected: CTR AUC 0.7731 ± 0.0049 on the `default` world, 3 seeds, +0.0002 ± 0.0002 vs the
          exact GSU (benchmarks/RESULTS.md, "Quality: SimHash two-stage search").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "full_simhash"
  c.model.gsu.approx = "simhash"
  return c
