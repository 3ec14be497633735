"""Tests of mcjax.metrics against scikit-learn and hand-checked edge cases."""

import json

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mcjax import metrics, report
from mcjax.contract.schema import TASKS


def _data(n=600, users=40, seed=0):
  rng = np.random.default_rng(seed)
  user = rng.integers(0, users, n)
  # Coarse scores: many ties, within and across users.
  p = np.round(rng.random(n), 1).astype(np.float32)
  y = (rng.random(n) < 0.2 + 0.5 * p).astype(np.float32)
  w = rng.random(n) * 3
  return y, p, user, w


def _ref_user_aucs(y, p, user):
  aucs, counts = [], []
  for u in np.unique(user):
    s = user == u
    if len(np.unique(y[s])) == 2:
      aucs.append(roc_auc_score(y[s], p[s]))
      counts.append(s.sum())
  return np.array(aucs), np.array(counts)


def test_auc_matches_sklearn_with_ties_and_weights():
  y, p, _, w = _data()
  np.testing.assert_allclose(metrics.auc(y, p), roc_auc_score(y, p), rtol=1e-12)
  np.testing.assert_allclose(metrics.auc(y, p, w), roc_auc_score(y, p, sample_weight=w),
                             rtol=1e-12)
  # All scores tied: 0.5.
  assert metrics.auc(y, np.zeros_like(p)) == pytest.approx(0.5)


def test_logloss_matches_sklearn_including_clipping():
  y, p, _, w = _data(seed=1)
  p = p.copy()
  p[:5] = 0.0   # clipped, as sklearn does
  p[5:10] = 1.0
  np.testing.assert_allclose(metrics.logloss(y, p), log_loss(y, p), rtol=1e-6)
  p64 = p.astype(np.float64)
  np.testing.assert_allclose(metrics.logloss(y, p64, w), log_loss(y, p64, sample_weight=w),
                             rtol=1e-10)


def test_uauc_and_gauc_match_per_user_loops():
  y, p, user, _ = _data(n=600, users=150, seed=2)
  aucs, counts = _ref_user_aucs(y, p, user)
  assert len(aucs) < len(np.unique(user))  # some users have a single class and are dropped
  np.testing.assert_allclose(metrics.uauc(y, p, user), aucs.mean(), rtol=1e-12)
  np.testing.assert_allclose(metrics.gauc(y, p, user), np.average(aucs, weights=counts),
                             rtol=1e-12)


def test_single_class_edge_cases():
  y = np.ones(4)
  p = np.array([0.1, 0.2, 0.3, 0.4])
  assert np.isnan(metrics.auc(y, p))
  assert np.isnan(metrics.uauc(y, p, np.array([1, 1, 2, 2])))
  assert np.isnan(metrics.gauc(y, p, np.array([1, 1, 2, 2])))
  assert np.isnan(metrics.auc([], []))
  # One user with both classes, one without: only the first counts.
  y = np.array([0, 1, 1, 1.0])
  assert metrics.uauc(y, p, np.array([1, 1, 2, 2])) == 1.0
  assert metrics.gauc(y, p, np.array([1, 1, 2, 2])) == 1.0


def test_evaluate_structure_slices_and_json():
  n, t = 300, len(TASKS)
  rng = np.random.default_rng(3)
  probs = rng.random((n, t)).astype(np.float32)
  labels = (rng.random((n, t)) < 0.3).astype(np.float32)
  labels[:, TASKS.index("gtr")] = 0.0  # single class
  mask = (rng.random((n, t)) < 0.8).astype(np.float32)
  user = rng.integers(0, 20, n)
  records = {"in_highlight": rng.integers(-1, 2, n).astype(np.int32),
             "lv_offsets": np.r_[0, np.cumsum(rng.integers(0, 10, n))]}
  slices = metrics.standard_slices(records, live_sparse_threshold=5)
  assert set(slices) == {"highlight", "non_highlight", "live_sparse", "other"}
  report = metrics.evaluate(probs, labels, mask, user, slices)
  json.dumps(report)
  ctr = TASKS.index("ctr")
  keep = mask[:, ctr] > 0
  got = report["overall"]["ctr"]
  assert got["n"] == keep.sum() and got["pos"] == labels[keep, ctr].sum()
  assert got["auc"] == pytest.approx(roc_auc_score(labels[keep, ctr], probs[keep, ctr]))
  assert report["overall"]["gtr"]["auc"] is None
  assert report["overall"]["gtr"]["gauc"] is None
  assert report["overall"]["gtr"]["logloss"] is not None
  for name, sel in slices.items():
    s = keep & sel
    y, p, u = labels[s, ctr], probs[s, ctr], user[s]
    got = report["slices"][name]["ctr"]
    assert got["n"] == s.sum()
    assert got["auc"] == pytest.approx(roc_auc_score(y, p))
    assert got["gauc"] == pytest.approx(metrics.gauc(y, p, u))
    assert got["uauc"] == pytest.approx(metrics.uauc(y, p, u))
    assert got["logloss"] == pytest.approx(log_loss(y, p), rel=1e-5)


def test_standard_slices_without_oracle_and_padded_lengths():
  slices = metrics.standard_slices({"in_highlight": np.full(4, -1), "lv_len": [0, 4, 5, 9]})
  assert set(slices) == {"live_sparse", "other"}
  np.testing.assert_array_equal(slices["live_sparse"], [True, True, False, False])
  with pytest.raises(ValueError, match="lv_len"):
    metrics.standard_slices({"in_highlight": np.zeros(3)})


def test_windowed_metrics_overall_is_exact():
  rng = np.random.default_rng(4)
  wm = metrics.WindowedMetrics(tasks=("ctr", "ltr"))
  parts, sparse = [], 0
  for window in (0, 1, 1, 2):
    n = 50
    part = (rng.random((n, 2)), (rng.random((n, 2)) < 0.4).astype(np.float32),
            np.ones((n, 2)), rng.integers(0, 5, n))
    slices = {"live_sparse": rng.random(n) < 0.5} if window != 2 else None
    sparse += 0 if slices is None else int(slices["live_sparse"].sum())
    wm.add(window, *part, slices=slices)
    parts.append(part)
  per = wm.per_window()
  assert [w["window"] for w in per] == [0, 1, 2]
  assert per[1]["overall"]["ctr"]["n"] == 100
  assert "live_sparse" not in per[2]["slices"]
  all_probs = np.concatenate([p[0] for p in parts]).astype(np.float32)
  all_labels = np.concatenate([p[1] for p in parts])
  overall = wm.overall()
  assert overall["overall"]["ctr"]["n"] == 200
  assert overall["overall"]["ltr"]["auc"] == pytest.approx(
      roc_auc_score(all_labels[:, 1], all_probs[:, 1]))
  assert overall["slices"]["live_sparse"]["ctr"]["n"] == sparse


def test_headroom_reads_which_term_the_model_carries():
  """A model whose logit is base + 0.5 affinity + highlight: the regression on the oracle's
  terms says so exactly; AUCs are the oracle's own; a slice without highlights has no
  highlight coefficient; records without an oracle are left out."""
  rng = np.random.default_rng(0)
  n = 2000
  base, aff = rng.normal(-1, 0.5, n), rng.normal(0, 1, n)
  hl = np.where(rng.random(n) < 0.3, rng.uniform(1, 2, n), 0.0)
  sig = lambda x: 1 / (1 + np.exp(-x))
  y = (rng.random(n) < sig(base + aff + hl)).astype(np.float32)
  oracle = {"oracle_p_click": sig(base + aff + hl), "oracle_p_no_highlight": sig(base + aff),
            "oracle_p_no_affinity": sig(base + hl)}
  p_model = sig(base + 0.5 * aff + hl)
  p_model[:10] = np.nan  # unscored records are left out, as are records without an oracle
  oracle["oracle_p_click"][10:20] = np.nan
  got = metrics.headroom_by_slice(p_model, y, oracle, {"highlight": hl > 0,
                                                       "non_highlight": hl == 0})
  h = got["overall"]
  assert h["n"] == n - 20 and h["pos"] == y[20:].sum()
  keep = slice(20, None)
  assert abs(h["oracle_auc"] - roc_auc_score(y[keep], oracle["oracle_p_click"][keep])) < 1e-12
  assert abs(h["oracle_no_affinity_auc"]
             - roc_auc_score(y[keep], oracle["oracle_p_no_affinity"][keep])) < 1e-12
  assert abs(h["auc"] - roc_auc_score(y[keep], p_model[keep])) < 1e-12
  assert h["oracle_auc"] > h["oracle_no_affinity_auc"] and h["oracle_auc"] > h["auc"]
  for k, want in (("rest", 1.0), ("affinity", 0.5), ("highlight", 1.0)):
    assert abs(h["learned"][k] - want) < 1e-4, (k, h["learned"])
  # the model's logit is exactly a combination of the terms: no residual, projected = model
  assert h["residual_sd"] < 1e-6 and abs(h["projected_auc"] - h["auc"]) < 1e-12
  noisy = sig(base + 0.5 * aff + hl + rng.normal(0, 1, n))
  hn = metrics.headroom(noisy[20:], y[20:], {k: v[20:] for k, v in oracle.items()})
  assert 0.9 < hn["residual_sd"] < 1.1 and hn["projected_auc"] > hn["auc"] + 0.02
  assert abs(hn["projected_auc"] - h["auc"]) < 0.01  # the noise-free model's AUC
  assert got["non_highlight"]["learned"]["highlight"] is None
  assert abs(got["non_highlight"]["learned"]["affinity"] - 0.5) < 1e-4
  assert metrics.headroom_by_slice(p_model, y, {k: np.full(n, np.nan) for k in oracle},
                                   {}) == {}
  table = report.headroom_table({"full": {"headroom": got}})
  assert "| full" in table and f"{h['oracle_auc']:.4f}" in table and "0.50" in table
  assert report.headroom_table({"full": {}}) is None
