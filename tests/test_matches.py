"""The hard-search match features, exact values on a hand-built batch."""

import numpy as np
import pytest

from mcjax.contract import schema
from mcjax.model import config as model_config
from mcjax.model import matches

H = matches.HOUR_MS


def _batch():
  b = schema.dummy_batch(2, 5, 4, seed=0)
  b["author_id"] = np.array([7, 8], np.int64)
  b["live_category"] = np.array([3, 1], np.int32)
  b["query_ts_ms"] = np.array([100 * H, 100 * H], np.int64)
  # short videos, most recent first; row 0 has 4 valid items, row 1 none
  b["sv_len"] = np.array([4, 0], np.int32)
  b["sv_author"] = np.array([[7, 5, 7, 7, 7], [8, 8, 8, 8, 8]], np.int64)
  b["sv_category"] = np.array([[3, 3, 2, 3, 3], [1, 1, 1, 1, 1]], np.int32)
  b["sv_ts_ms"] = np.array([[99.5, 99, 90, 50, 10]] * 2) * H
  b["sv_ts_ms"] = b["sv_ts_ms"].astype(np.int64)
  b["sv_action"] = np.array([[1, 1, 3, 0, 2], [3] * 5], np.int32)   # like=1, follow=2
  b["sv_progress"] = np.array([[0.5, 1.0, 0.25, 1.0, 9.0], [1.0] * 5], np.float32)
  # lives: row 0 has 3 valid items
  b["lv_len"] = np.array([3, 0], np.int32)
  b["lv_author"] = np.array([[7, 7, 4, 7], [8] * 4], np.int64)
  b["lv_category"] = np.array([[3, 3, 3, 0], [1] * 4], np.int32)
  b["lv_ts_ms"] = (np.array([[99.9, 80, 70, 60]] * 2) * H).astype(np.int64)
  b["lv_action"] = np.array([[1 | 2, 0, 1, 1], [31] * 4], np.int32)  # click=1, like=2
  b["lv_watch_s"] = np.array([[99.0, 0.0, 5.0, 7.0], [1.0] * 4], np.float32)
  return b


def test_counts_are_the_default_and_unchanged():
  b = _batch()
  f = np.asarray(matches.match_features(b, ("sv",)))
  assert f.shape == (2, 4)
  # row 0: same author 3 (positions 0, 2, 3), same category 3 (0, 1, 3), first at 0, length 4
  np.testing.assert_allclose(f[0], np.log1p([3, 3, 0, 4]), rtol=1e-6)
  np.testing.assert_allclose(f[1], 0.0)  # nothing valid: zero counts, recency = length = 0


def test_affinity_features_exact():
  b = _batch()
  f = np.asarray(matches.match_features(b, ("lv", "sv"), "affinity"))
  per = len(matches.PER_DOMAIN) + len(matches.AFFINITY)
  assert f.shape == (2, 2 * per) == (2, matches.num_features(("lv", "sv"), "affinity"))
  lv = dict(zip(matches.PER_DOMAIN + matches.AFFINITY, f[0, :per]))
  sv = dict(zip(matches.PER_DOMAIN + matches.AFFINITY, f[0, per:]))
  # short video: valid 0..3; same author at 0 (0.5 h ago, like), 2 (10 h, like+follow), 3 (50 h)
  assert sv["author_share"] == pytest.approx(3 / 4)
  assert sv["category_share"] == pytest.approx(3 / 4)
  assert sv["author_1h"] == pytest.approx(np.log1p(1))
  assert sv["author_1d"] == pytest.approx(np.log1p(2))
  assert sv["author_liked"] == pytest.approx(np.log1p(2))
  assert sv["author_followed"] == pytest.approx(np.log1p(1))
  assert sv["author_engaged"] == pytest.approx(np.log1p(0.5 + 0.25 + 1.0))  # not position 4
  assert sv["author_clicked"] == 0.0
  # live: valid 0..2; same author at 0 (clicked, liked, 99 s) and 1 (20 h ago, not clicked)
  assert lv["author_share"] == pytest.approx(2 / 3)
  assert lv["category_share"] == pytest.approx(1.0)
  assert lv["author_1h"] == pytest.approx(np.log1p(1))
  assert lv["author_1d"] == pytest.approx(np.log1p(2))
  assert lv["author_liked"] == pytest.approx(np.log1p(1))
  assert lv["author_followed"] == 0.0
  assert lv["author_engaged"] == pytest.approx(np.log1p(np.log1p(99.0)), rel=1e-6)
  assert lv["author_clicked"] == pytest.approx(np.log1p(1))
  # row 1 has no valid history: every affinity feature is 0 (padding never counts)
  np.testing.assert_allclose(f[1], 0.0)
  # the counts part is the default set's
  np.testing.assert_allclose(f[:, :4], np.asarray(matches.match_features(b, ("lv",)))[:, :4])


def test_unknown_match_set_is_refused():
  cfg = model_config.default()
  cfg.match_set = "rates"
  with pytest.raises(ValueError, match="match_set"):
    model_config.validate(cfg)


def test_user_rates_exact():
  b = _batch()
  f = np.asarray(matches.match_features(b, ("lv", "sv"), "affinity_user"))
  names = matches.PER_DOMAIN + matches.AFFINITY + matches.USER_RATES
  assert f.shape == (2, 2 * len(names)) == (2, matches.num_features(("lv", "sv"),
                                                                    "affinity_user"))
  lv = dict(zip(names, f[0, :len(names)]))
  sv = dict(zip(names, f[0, len(names):]))
  # sv valid 0..3: actions 1, 1, 3, 0 -> liked 3/4, followed 1/4; progress 0.5, 1, 0.25, 1
  assert sv["liked_share"] == pytest.approx(3 / 4)
  assert sv["followed_share"] == pytest.approx(1 / 4)
  assert sv["clicked_share"] == 0.0
  assert sv["mean_engaged"] == pytest.approx(2.75 / 4)
  # lv valid 0..2: actions 3, 0, 1 -> clicked 2/3, liked 1/3; watch 99, 0, 5
  assert lv["clicked_share"] == pytest.approx(2 / 3)
  assert lv["liked_share"] == pytest.approx(1 / 3)
  assert lv["followed_share"] == 0.0
  assert lv["mean_engaged"] == pytest.approx((np.log1p(99.0) + np.log1p(5.0)) / 3, rel=1e-6)
  np.testing.assert_allclose(f[1], 0.0)
  # the affinity part is the affinity set's
  aff = np.asarray(matches.match_features(b, ("lv", "sv"), "affinity"))
  per = len(matches.PER_DOMAIN) + len(matches.AFFINITY)
  np.testing.assert_allclose(f[:, :per], aff[:, :per])
  np.testing.assert_allclose(f[:, len(names):len(names) + per], aff[:, per:])


def test_log_shares_exact():
  b = _batch()
  f = np.asarray(matches.match_features(b, ("lv", "sv"), "affinity_log"))
  per = len(matches.PER_DOMAIN) + len(matches.AFFINITY) + len(matches.LOG_SHARES)
  assert f.shape == (2, 2 * per) == (2, matches.num_features(("lv", "sv"), "affinity_log"))
  names = matches.PER_DOMAIN + matches.AFFINITY + matches.LOG_SHARES
  lv, sv = dict(zip(names, f[0, :per])), dict(zip(names, f[0, per:]))
  # the affinity part is the affinity set's
  np.testing.assert_allclose(
      f[:, per:per + len(matches.PER_DOMAIN) + len(matches.AFFINITY)],
      np.asarray(matches.match_features(b, ("sv",), "affinity")), rtol=1e-6)
  # short video: 4 valid, 3 of the category (0, 1, 3), 3 of the author; liked: 0, 1, 2 (1 bit),
  # of them category 3 at 0 and 1
  cat = np.log((3 + 0.5) / (4 + 8))
  assert sv["category_log_share"] == pytest.approx(cat)
  assert sv["author_log_share"] == pytest.approx(np.log((3 + 0.1) / (4 + 1)))
  assert sv["category_engaged_log_ratio"] == pytest.approx(np.log((2 + 0.5) / (3 + 8)) - cat)
  # live: 3 valid, all category 3, 2 of the author; clicked: 0 and 2 (both category 3)
  cat = np.log((3 + 0.5) / (3 + 8))
  assert lv["category_log_share"] == pytest.approx(cat)
  assert lv["author_log_share"] == pytest.approx(np.log((2 + 0.1) / (3 + 1)))
  assert lv["category_engaged_log_ratio"] == pytest.approx(np.log((2 + 0.5) / (2 + 8)) - cat)
  # no valid history: the priors (a sixteenth of the category, nothing of the author)
  row1 = dict(zip(names, f[1, per:]))
  assert row1["category_log_share"] == pytest.approx(np.log(0.5 / 8))
  assert row1["category_engaged_log_ratio"] == pytest.approx(0.0)
