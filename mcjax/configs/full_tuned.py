"""full_tuned: `full` with the levers kept on `offline_tvt` validation (experiments/levers).

Three changes from `full`, each measured alone and together on the `default` and `m3like`
worlds (3 seeds, chosen on the validation hours, the test hours read once):
`moment.sv_hist_len` 64 -> 256 with the two-stage search (`model.gsu.approx = "simhash"`),
the user x author interaction features (`model.match_set = "affinity"`), and row-wise
Adagrad's initial accumulator 0 -> 1e-4 (`train.embedding_initial_accumulator`), which stops
a rarely seen id's first updates from being `lr * sign(g)`. `full` keeps its defaults while
the studies and benchmarks quoted for it are not re-run with these.

Command:  python -m experiments.levers --worlds=default,m3like --seeds=3 --levers=combo_acc1e4 \
              --workdir=runs/levers_tvt
Hardware: any; sized for a 2-core CPU like `full` (step time in experiments/levers/RESULTS.md).
Expected: test CTR AUC 0.7722 ± 0.0101 on the `default` world, 3 seeds, `offline_tvt`
          (experiments/levers/RESULTS.md, "combo_acc1e4").
"""

from mcjax.config import apply_overrides, default_config

# Its overrides of `full`; experiments/levers.py measures them as the lever `combo_acc1e4`.
TUNED = {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash",
         "model.match_set": "affinity", "train.embedding_initial_accumulator": 1e-4}


def get_config():
  c = apply_overrides(default_config(), dict(TUNED))
  c.name = "full_tuned"
  return c
