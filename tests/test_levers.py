"""The lever study's table and verdict (experiments.levers) on made-up run rows."""

import os

import numpy as np
import pytest

from experiments import levers


def _row(valid, test):
  return {"valid_auc": valid, "valid_logloss": 0.4, "test_auc": test, "test_logloss": 0.45,
          "test_base": 0.55, "gap": 0.8 - test, "affinity": 0.7, "highlight": 0.4,
          "projected": test + 0.04,
          "residual_sd": 0.6, "step_s": 0.1, "wall_s": 60.0}


def test_kept_only_when_validation_gains_on_every_world_beyond_the_spread():
  rows = {}
  for w in ("default", "m3like"):
    for s in range(3):
      rows[(w, s, "base")] = _row(0.75 + s / 100, 0.74)
      rows[(w, s, "good")] = _row(0.755 + s / 100 + (0.001 * s), 0.70)  # test ignored
      rows[(w, s, "mixed")] = _row(0.75 + s / 100 + (0.004 if w == "default" else -0.001),
                                   0.80)
  table, verdict = levers.lever_table(rows, "good", ("default", "m3like"), range(3))
  assert verdict == "kept"
  assert "+0.0060 ± 0.0010 (+0.0050, +0.0060, +0.0070)" in table  # paired valid deltas
  assert "-0.0400" in table  # the test delta is reported, not used
  assert levers.lever_table(rows, "mixed", ("default", "m3like"), range(3))[1] == "dropped"
  noisy = dict(rows)
  for s, d in enumerate((0.004, -0.003, 0.002)):
    noisy[("default", s, "good")] = _row(0.75 + s / 100 + d, 0.74)
  assert levers.lever_table(noisy, "good", ("default", "m3like"), range(3))[1] == "dropped"


def test_full_is_the_kept_levers_and_base_is_full_before_the_study():
  """`full`'s defaults are the levers the study kept (``CURRENT``); its `base` (and every
  lever's starting point) is `full` as it was before, so the study's command reproduces its
  numbers whatever the defaults become."""
  from mcjax import config as mcconfig
  full = mcconfig.load_config("full")
  current = levers.overrides(levers.CURRENT)
  assert set(current) == set(mcconfig.BEFORE_LEVERS)
  assert mcconfig.load_config("full", current).to_dict() == full.to_dict()
  base = mcconfig.load_config("full", levers.overrides("base"))

  def at(cfg, key):
    for part in key.split("."):
      cfg = cfg[part]
    return cfg

  for key, value in mcconfig.BEFORE_LEVERS.items():
    assert at(base, key) == value and at(full, key) == current[key] != value, key
  hist = mcconfig.load_config("full", levers.overrides("hist256"))
  assert (hist.moment.sv_hist_len, hist.model.match_set, hist.train.learning_rate) == \
      (256, "counts", 1e-3)
  first = mcconfig.load_config("full", levers.overrides(levers.TUNED_LEVER))
  assert first.model.match_set == "affinity" and first.model.crowd.drop == ()
  tuned = mcconfig.load_config("full", levers.overrides("tuned_dense_x2"))
  assert tuned.train.learning_rate == 2e-3 and tuned.model.crowd.drop == ()


def test_reference_table_puts_models_between_base_and_oracle():
  rows = {(w, s, n): _row(0.75, t) for w in ("default",) for s in range(2)
          for n, t in (("base", 0.74), ("good", 0.76))}
  refs = {("default", s): {"oracle_auc": 0.80, "oracle_affinity_estimated_auc": 0.78,
                           "oracle_estimated_auc": 0.765, "highlight_r2": 0.5,
                           "affinity_r2": 0.8, "lr_auc": 0.755} for s in range(2)}
  table = levers.reference_table(("default",), range(2), ["base", "good"], rows, refs)
  line = table.splitlines()[2]
  # shares of base's gap (0.06): half the gap 50%, the LR 25%, `good` 33%
  assert "| 0.7700 ± 0.0000 (50%) |" in line and "| 0.7550 ± 0.0000 (25%) |" in line
  assert "0.7600 ± 0.0000 (33%)" in line and "0.7800 ± 0.0000 (67%) R² 0.80" in line
  assert "| 0.7650 ± 0.0000 (42%) R² 0.50 |" in line  # the oracle with both terms estimated


def test_a_block_survives_the_report_rewritten_around_it(tmp_path):
  from experiments import blocks
  path = tmp_path / "RESULTS.md"
  path.write_text("# Ablation\n\nold body\n")
  blocks.put(str(path), "levers", "## Levers\n\nfirst")
  blocks.put(str(path), "levers", "## Levers\n\nsecond")  # replaced, not appended twice
  text = path.read_text()
  assert text.count("block levers: begin") == 1 and "second" in text and "first" not in text
  assert text.startswith("# Ablation\n\nold body\n")
  # a report rewritten whole carries the block over
  kept = blocks.carry_from(str(path))
  assert kept == blocks.wrap("levers", "## Levers\n\nsecond")
  assert blocks.carry("no blocks here") == ""


def test_tuned_levers_are_judged_against_the_kept_levers():
  rows = {}
  for s in range(3):
    rows[("default", s, "base")] = _row(0.75, 0.74)
    rows[("default", s, levers.TUNED_LEVER)] = _row(0.77 + s / 1000, 0.76)
    rows[("default", s, "tuned_x")] = _row(0.765 + s / 1000, 0.76)  # above base, below parent
  table, verdict = levers.lever_table(rows, "tuned_x", ("default",), range(3))
  assert verdict == "dropped" and "-0.0050 ± 0.0000" in table
  line = levers.summary(("default",), range(3), ["base", "tuned_x"], rows, None).splitlines()[2]
  assert line.startswith(f"| tuned_x | {levers.TUNED_LEVER} | -0.0050")


def test_fresh_seeds_are_reported_under_their_own_numbers():
  """--first_seed: a replication on seeds 3..5 pairs and names those seeds, not 0..2."""
  seeds = range(3, 6)
  rows = {("default", s, n): _row(0.75 + s / 100 + (0.002 + s / 1000 if n == "good" else 0),
                                  0.74) for s in seeds for n in ("base", "good")}
  table, verdict = levers.lever_table(rows, "good", ("default",), seeds)
  assert verdict == "kept" and "(+0.0050, +0.0060, +0.0070)" in table
  rows.update({("default", s, "hist256"): r for (_, s, n), r in list(rows.items()) if n == "good"})
  text = levers.report("cmd", ("default",), seeds, ["base", "hist256"], rows, None)
  assert "world seed = model seed = 3, 4, 5." in text


def test_summary_into_a_missing_report_is_refused_before_any_run(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  missing = str(tmp_path / "nope" / "RESULTS.md")
  out = subprocess.run([sys.executable, "-m", "experiments.levers", "--levers=base",
                        f"--workdir={tmp_path / 'work'}", f"--summary_into={missing}"],
                       cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode != 0 and f"--summary_into={missing}: no such report" in out.stderr
  assert not os.path.exists(tmp_path / "work")  # nothing trained, nothing written


def _preds(run_dir, ids, logit, y):
  os.makedirs(os.path.join(run_dir, "preds"))
  p = 1.0 / (1.0 + np.exp(-logit))
  np.savez(os.path.join(run_dir, "preds", "window_00001.npz"), exposure_id=ids,
           probs=np.stack([p, p], 1), labels=np.stack([y, y], 1),
           mask=np.ones((len(ids), 2), np.float32))


def test_the_average_of_two_noisy_models_beats_each_and_records_must_match(tmp_path):
  rng = np.random.default_rng(0)
  n = 4000
  truth = rng.normal(size=n)
  y = (rng.random(n) < 1.0 / (1.0 + np.exp(-truth))).astype(np.float32)
  ids = np.arange(n)
  seed_dir = tmp_path / "default" / "seed_0"
  for name in ("a", "b"):  # the same truth, each with its own noise; rows in another order
    order = rng.permutation(n)
    logit = truth + rng.normal(scale=1.5, size=n)
    _preds(str(seed_dir / name), ids[order], logit[order], y[order])
  aucs = levers.ensemble(str(tmp_path), ("default",), range(1), ["a", "b"])[("default", 0)]
  assert aucs["average"] > max(aucs["a"], aucs["b"]) + 0.01, aucs
  line = levers.ensemble_table({("default", 0): aucs}, ["a", "b"]).splitlines()[2]
  assert line.startswith("| default | 0 | ") and f"| {aucs['average']:.4f} |" in line
  _preds(str(seed_dir / "c"), ids[:-1], truth[:-1], y[:-1])
  with pytest.raises(ValueError, match="different test records"):
    levers.ensemble(str(tmp_path), ("default",), range(1), ["a", "c"])


def test_now_levers_are_judged_against_full_and_a_block_names_its_seeds():
  """A `now_*` lever is a change on top of `full`'s defaults: its delta and verdict are
  against ``CURRENT``; a study of other seeds writes a block whose heading names them."""
  seeds = range(3, 6)
  rows = {}
  for s in seeds:
    rows[("default", s, "base")] = _row(0.75, 0.74)
    rows[("default", s, levers.CURRENT)] = _row(0.78 + s / 1000, 0.77)
    rows[("default", s, "now_x")] = _row(0.776 + s / 1000, 0.77)  # above base, below full
  assert levers.parent_of("now_x") == levers.CURRENT
  table, verdict = levers.lever_table(rows, "now_x", ("default",), seeds)
  assert verdict == "dropped" and "-0.0040 ± 0.0000" in table
  block = levers.summary_block("cmd", ("default",), seeds, ["base", "now_x"], rows, None, {},
                               ["base"], None)
  assert block.splitlines()[0].endswith("tested once; seeds 3-5)")
  assert f"| now_x | {levers.CURRENT} | -0.0040" in block
