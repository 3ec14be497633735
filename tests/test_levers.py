"""The lever study's table and verdict (experiments.levers) on made-up run rows."""

from experiments import levers


def _row(valid, test):
  return {"valid_auc": valid, "valid_logloss": 0.4, "test_auc": test, "test_logloss": 0.45,
          "test_base": 0.55, "gap": 0.8 - test, "affinity": 0.7, "projected": test + 0.04,
          "residual_sd": 0.6, "step_s": 0.1, "wall_s": 60.0}


def test_kept_only_when_validation_gains_on_every_world_beyond_the_spread():
  rows = {}
  for w in ("default", "m3like"):
    for s in range(3):
      rows[(w, s, "base")] = _row(0.75 + s / 100, 0.74)
      rows[(w, s, "good")] = _row(0.755 + s / 100 + (0.001 * s), 0.70)  # test ignored
      rows[(w, s, "mixed")] = _row(0.75 + s / 100 + (0.004 if w == "default" else -0.001),
                                   0.80)
  table, verdict = levers.lever_table(rows, "good", ("default", "m3like"), 3)
  assert verdict == "kept"
  assert "+0.0060 ± 0.0010 (+0.0050, +0.0060, +0.0070)" in table  # paired valid deltas
  assert "-0.0400" in table  # the test delta is reported, not used
  assert levers.lever_table(rows, "mixed", ("default", "m3like"), 3)[1] == "dropped"
  noisy = dict(rows)
  for s, d in enumerate((0.004, -0.003, 0.002)):
    noisy[("default", s, "good")] = _row(0.75 + s / 100 + d, 0.74)
  assert levers.lever_table(noisy, "good", ("default", "m3like"), 3)[1] == "dropped"


def test_full_tuned_is_full_with_the_kept_levers():
  from mcjax import config as mcconfig
  from mcjax.configs import full_tuned
  tuned = mcconfig.load_config("full_tuned")
  combo = mcconfig.load_config("full", dict(levers.LEVERS["combo_acc1e4"][1]))
  assert full_tuned.TUNED == levers.LEVERS["combo_acc1e4"][1]
  tuned.name = combo.name
  assert tuned.to_dict() == combo.to_dict()
