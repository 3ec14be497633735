"""The run report: every task, Ranking_Score's AUC, plots only of windows that mean something."""

import numpy as np
from sklearn.metrics import roc_auc_score

from mcjax import metrics, report
from mcjax.contract.schema import TASKS


def _window(start, n, pos, auc=0.7):
  r = {"auc": auc, "n": n, "pos": pos}
  return {"start_ms": start, "end_ms": start + 600_000, "n": n, "ctr": r}


def test_plot_points_drop_thin_windows_and_break_at_gaps():
  ws = [_window(0, 500, 50), _window(600_000, 13, 1, auc=0.0),  # thin: dropped
        _window(1_200_000, 500, 50), _window(1_800_000, 500, 50),
        _window(2_400_000, 500, 490)]  # 10 negatives: dropped
  x, y, se = report.plot_points(ws)
  # window 0, a break (window 1 dropped), windows 2-3 adjacent: no break between them
  assert np.isnan(y[1]) and np.isfinite(y[[0, 2, 3]]).all() and len(y) == 4
  assert x[2] == 1_500_000 and (se[np.isfinite(se)] > 0).all()
  assert 0.0 not in y


def test_auc_standard_error_matches_hanley_mcneil():
  # Hanley & McNeil (1982), eq. 2 with Q1 = A / (2 - A), Q2 = 2 A^2 / (1 + A), by hand:
  # A = 0.8, 50 positives, 50 negatives: var = (0.16 + 49 * 0.02667 + 49 * 0.07111) / 2500
  assert abs(report.auc_standard_error(0.8, 50, 50) - 0.04450) < 5e-5
  assert report.auc_standard_error(0.8, 500, 500) < report.auc_standard_error(0.8, 50, 50) / 3


def test_ranking_auc_and_the_six_tasks_in_the_table():
  rng = np.random.default_rng(0)
  n = 400
  labels = (rng.random((n, len(TASKS))) < 0.3).astype(np.float32)
  mask = (rng.random((n, len(TASKS))) < 0.8).astype(np.float32)
  score = rng.random(n) + labels[:, 0]
  got = metrics.ranking_auc(score, labels, mask)
  for t in ("ctr", "lvtr"):
    i = TASKS.index(t)
    keep = mask[:, i] > 0
    assert abs(got[t]["auc"] - roc_auc_score(labels[keep, i], score[keep])) < 1e-12
    assert got[t]["n"] == keep.sum() and got[t]["pos"] == labels[keep, i].sum()
  overall = metrics.evaluate(np.clip(labels * 0.5 + 0.25, 0, 1), labels, mask,
                             np.arange(n))["overall"]
  runs = {"full": {"overall": overall, "ranking": {
      "fusion": "product", "weights": dict.fromkeys(TASKS, 1.0), "auc": got}}}
  table = report.metric_table(runs)
  assert all(f"{t} (" in table for t in TASKS)
  assert f"{got['ctr']['auc']:.4f}" in report.ranking_table(runs)
