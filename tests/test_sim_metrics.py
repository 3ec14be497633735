"""The simulator's numpy judges: rank AUC, offset logistic regression, causal window counts."""

import numpy as np
from sklearn.metrics import roc_auc_score

from mcjax.sim import metrics as M
from mcjax.sim.config import make_config
from mcjax.sim.entities import build_entities, highlight_strength_at


def test_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(0)
  y = rng.random(500) < 0.3
  s = np.round(rng.random(500) + 0.3 * y, 1)        # many ties
  assert abs(M.auc(y, s) - roc_auc_score(y, s)) < 1e-12
  assert np.isnan(M.auc(np.zeros(3), np.arange(3)))


def test_logistic_learns_only_what_the_offset_misses():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(20_000, 2))
  offset = rng.normal(size=20_000)
  y = rng.random(20_000) < 1 / (1 + np.exp(-(offset - 0.5 + 1.5 * x[:, 0])))
  score = M.fit_logistic(x, y, offset, l2=0.0)
  # The fitted logit minus the offset is -0.5 + 1.5 * x0 (x1 is noise).
  z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  got = score(z, np.zeros(3))
  assert abs(got[0] + 0.5) < 0.1 and abs(got[1] - got[0] - 1.5) < 0.1
  assert abs(got[2] - got[0]) < 0.1


def test_count_before_is_strict_and_windowed():
  group = np.array([1, 1, 1, 2, 1])
  ts = np.array([0, 10, 20, 20, 30])
  q_group, q_ts = np.array([1, 1, 2, 3]), np.array([20, 31, 21, 50])
  assert M.count_before(group, ts, q_group, q_ts).tolist() == [2, 4, 1, 0]
  assert M.count_before(group, ts, q_group, q_ts, window_ms=15).tolist() == [1, 2, 1, 0]


def test_highlights_do_not_overlap_and_lookup_finds_them():
  ent = build_entities(make_config("small"), np.random.default_rng(0))
  same = ent.hl_live[1:] == ent.hl_live[:-1]
  assert np.all(ent.hl_start_ms[1:][same] >= ent.hl_end_ms[:-1][same])
  mid = (ent.hl_start_ms + ent.hl_end_ms) // 2
  assert np.array_equal(highlight_strength_at(ent, ent.hl_live, mid), ent.hl_strength)
  assert np.all(highlight_strength_at(ent, ent.hl_live, ent.hl_end_ms) == 0)
