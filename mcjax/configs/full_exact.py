"""full_exact: `full` with the exact GSU (every history position scored with gradient).

The only difference from `full` is `model.gsu.approx = "off"`: the soft GSU scores every
short-video history position and keeps its top-k, where `full` pre-scores every position
without gradient by agreeing bits of 32-bit SimHash signatures (item + author), keeps the best
`model.gsu.candidates` (64) and runs the exact soft GSU on those (`mcjax/model/gsu.py`). It is
the reference the two-stage search is measured against; with histories no longer than the
candidates the two are the same.

Command:  python -m experiments.ablation --nopeer --configs=full_exact,full \
              --config.model.match_set=counts --config.train.embedding_initial_accumulator=0.0 \
              --workdir=runs/gsu_default
Hardware: any; its step grows with the history, `full`'s hardly (benchmarks/RESULTS.md, "The
          paper's history length at speed").
Expected: CTR AUC 0.7729 ± 0.0049 on the `default` world, 3 seeds, 0.0002 ± 0.0002 below the
          two-stage search (benchmarks/RESULTS.md, "Quality: SimHash two-stage search").
"""

from mcjax.config import default_config


def get_config():
  c = default_config()
  c.name = "full_exact"
  c.model.gsu.approx = "off"
  return c
