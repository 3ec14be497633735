"""Moment engine: exact samples of a hand-computed log in every mode, eval records, stats."""

import numpy as np
import pytest

from mcjax.moment import MomentConfig
from mcjax.moment.engine import build_samples
from mcjax.moment.synth import EPOCH_MS, random_log, tables_from_events
from mcjax.contract import schema as SS

RT, CLOSE, FAST, SLOW, EVAL = SS.REALTIME, SS.CLOSE, SS.FAST, SS.SLOW, SS.EVAL
ONES = (1, 1, 1, 1, 1, 1)
ZEROS = (0, 0, 0, 0, 0, 0)


def ev(t_s, xid, event, value=0.0, domain="live", item=100, author=7):
  return (EPOCH_MS + int(t_s * 1000), 1, xid, domain, item, author, event, value)


def _log(watch_end_s=95, extra=()):
  """One user, one live: exposure A (click 3 s, like 12 s, comment 40 s, like 50 s,
  watch_end, follow 100 s after the close) and an unclicked exposure B at 200 s; plus one
  short-video play before them. 10 events (and the ``extra`` ones)."""
  return tables_from_events(sorted(list(extra) + [
      ev(-100, 50, "exposure", domain="short_video", item=500, author=9),
      ev(-76, 50, "watch_end", 24.0, domain="short_video", item=500, author=9),
      ev(0, 1, "exposure"), ev(3, 1, "click"), ev(12, 1, "like"), ev(40, 1, "comment"),
      ev(50, 1, "like"), ev(watch_end_s, 1, "watch_end", watch_end_s - 3.0),
      ev(100, 1, "follow"), ev(200, 2, "exposure"),
  ]))


def _samples(table):
  """[(sample time in s, exposure id, kind, labels, mask)] of a sample table."""
  return [((int(t) - EPOCH_MS) / 1000, int(x), int(k), tuple(int(v) for v in y),
           tuple(int(v) for v in m))
          for t, x, k, y, m in zip(table["sample_ts_ms"], table["exposure_id"], table["kind"],
                                   table["labels"], table["label_mask"])]


def test_realtime_first_only():
  out = build_samples(_log(), MomentConfig())
  assert _samples(out["train"]) == [
      (30.0, 1, RT, (1, 0, 1, 0, 0, 0), (1, 0, 1, 0, 0, 0)),   # click 3 s, like 12 s
      (60.0, 1, RT, (0, 0, 0, 1, 0, 0), (0, 0, 0, 1, 0, 0)),   # comment 40 s
      (90.0, 1, RT, (0, 1, 0, 0, 0, 0), (0, 1, 0, 0, 0, 0)),   # long view 63 s
      (95.0, 1, CLOSE, ZEROS, (0, 0, 0, 0, 1, 1)),             # gift, follow never fired
      (230.0, 2, CLOSE, ZEROS, ONES),                          # no click: closes at 30 s
  ]
  stats = out["stats"]
  assert stats["samples"] == {"realtime": 3, "close": 2, "fast": 0, "slow": 0}
  assert stats["ignored_after_close"] == 1 and stats["late_clicks"] == 0


def test_realtime_close_takes_labels_of_its_window():
  # watch_end at 80 s: the long view (63 s) fires in the close's window (60, 90].
  out = build_samples(_log(watch_end_s=80), MomentConfig())
  assert _samples(out["train"]) == [
      (30.0, 1, RT, (1, 0, 1, 0, 0, 0), (1, 0, 1, 0, 0, 0)),
      (60.0, 1, RT, (0, 0, 0, 1, 0, 0), (0, 0, 0, 1, 0, 0)),
      (80.0, 1, CLOSE, (0, 1, 0, 0, 0, 0), (0, 1, 0, 0, 1, 1)),
      (230.0, 2, CLOSE, ZEROS, ONES),
  ]


def test_realtime_repeated_positives():
  out = build_samples(_log(), MomentConfig(first_only=False))
  assert _samples(out["train"]) == [
      (30.0, 1, RT, (1, 0, 1, 0, 0, 0), (1, 0, 1, 0, 0, 0)),
      (60.0, 1, RT, (1, 0, 1, 1, 0, 0), (1, 0, 1, 1, 0, 0)),
      (90.0, 1, RT, (1, 1, 1, 1, 0, 0), (1, 1, 1, 1, 0, 0)),
      (95.0, 1, CLOSE, (1, 1, 1, 1, 0, 0), ONES),
      (230.0, 2, CLOSE, ZEROS, ONES),
  ]


def test_on_close():
  out = build_samples(_log(), MomentConfig(mode="on_close"))
  assert _samples(out["train"]) == [
      (95.0, 1, CLOSE, (1, 1, 1, 1, 0, 0), ONES),
      (230.0, 2, CLOSE, ZEROS, ONES),
  ]


def test_fast_slow():
  out = build_samples(_log(), MomentConfig(mode="fast_slow", fast_window_s=30,
                                           slow_window_s=120))
  assert _samples(out["train"]) == [
      (30.0, 1, FAST, (1, 0, 1, 0, 0, 0), ONES),
      (120.0, 1, SLOW, (0, 1, 0, 1, 0, 0), (0, 1, 0, 1, 0, 0)),
      (230.0, 2, FAST, ZEROS, ONES),   # closes before the fast window ends
  ]
  # A slow window of 60 s misses the long view (63 s).
  out = build_samples(_log(), MomentConfig(mode="fast_slow", fast_window_s=30,
                                           slow_window_s=60))
  assert _samples(out["train"])[1] == (60.0, 1, SLOW, (0, 0, 0, 1, 0, 0), (0, 0, 0, 1, 0, 0))
  assert out["stats"]["labels_after_slow"] == 1


def test_eval_records_and_their_features():
  out = build_samples(_log(), MomentConfig())
  ev = out["eval"]
  assert _samples(ev) == [(0.0, 1, EVAL, (1, 1, 1, 1, 0, 0), ONES),
                          (200.0, 2, EVAL, ZEROS, ONES)]
  np.testing.assert_array_equal(ev["in_highlight"], [-1, -1])
  assert np.isnan(ev["oracle_p_click"]).all()
  # Short-video history: the one play (24 s of a 30 s video), before both exposures.
  np.testing.assert_array_equal(ev["sv_offsets"], [0, 1, 2])
  np.testing.assert_array_equal(ev["sv_item"], [500, 500])
  np.testing.assert_allclose(ev["sv_progress"], [0.8, 0.8])
  # Live history of B: A, watched 92 s, click|like|comment|follow seen before 200 s.
  np.testing.assert_array_equal(ev["lv_offsets"], [0, 0, 1])
  assert ev["lv_item"].tolist() == [100] and ev["lv_watch_s"].tolist() == [92.0]
  assert ev["lv_action"].tolist() == [1 | 2 | 4 | 16]
  # Crowd of the live at 200 s: A's exposure, click, 2 likes, comment; nobody watching.
  crowd = dict(zip(SS.CROWD_FEATURES, ev["crowd"][1].tolist()))
  assert crowd["exposures_all"] == 1 and crowd["clicks_all"] == 1 and crowd["likes_5m"] == 2
  assert crowd["comments_all"] == 1 and crowd["exposures_30s"] == 0
  assert crowd["click_rate_all"] == 1.0 and crowd["viewers_now"] == 0
  assert crowd["live_age_s"] == 200.0
  assert ev["hour_of_day"].tolist() == [0, 0]


def test_short_video_plays_never_reach_live_labels_or_crowd():
  # A play (exposure + watch_end, no click) by the same user during A's watch, of a video
  # whose id is the live's id: it must not close, label or count as a live viewer.
  play = [ev(20, 60, "exposure", domain="short_video"),
          ev(30, 60, "watch_end", 10.0, domain="short_video"),
          ev(30, 60, "like", domain="short_video")]
  base = build_samples(_log(), MomentConfig())
  out = build_samples(_log(extra=play), MomentConfig())
  for split in ("train", "eval"):
    for name in ("sample_ts_ms", "exposure_id", "kind", "labels", "label_mask", "crowd"):
      np.testing.assert_array_equal(out[split][name], base[split][name], err_msg=name)
  for name in ("live_exposures", "ignored_without_click", "ignored_after_close", "late_clicks"):
    assert out["stats"][name] == base["stats"][name], name
  assert out["stats"]["ignored_without_click"] == 0
  # The play is in B's short-video history (newest first), liked, 10 s of 30 s.
  ev_ = out["eval"]
  b = slice(ev_["sv_offsets"][1], ev_["sv_offsets"][2])
  assert ev_["sv_item"][b].tolist() == [100, 500]
  np.testing.assert_allclose(ev_["sv_progress"][b], [1 / 3, 0.8], rtol=1e-6)
  assert ev_["sv_action"][b].tolist() == [1, 0]


def test_unclicked_exposure_late_click_is_ignored():
  base = [(EPOCH_MS, 1, 1, "live", 100, 7, "exposure", 0.0),
          (EPOCH_MS + 31_000, 1, 1, "live", 100, 7, "click", 0.0),
          (EPOCH_MS + 40_000, 1, 1, "live", 100, 7, "like", 0.0)]
  out = build_samples(tables_from_events(base), MomentConfig())
  assert _samples(out["train"]) == [(30.0, 1, CLOSE, ZEROS, ONES)]
  assert out["stats"]["late_clicks"] == 1 and out["stats"]["ignored_without_click"] == 1


def test_eval_records_identical_across_modes():
  tables = random_log(300, users=20, lives=4, hours=0.5, seed=3)
  configs = [MomentConfig(), MomentConfig(first_only=False),
             MomentConfig(mode="on_close"), MomentConfig(mode="fast_slow"),
             MomentConfig(features_at="sample"),
             MomentConfig(mode="fast_slow", fast_window_s=60, slow_window_s=120,
                          features_at="sample")]
  evals = [build_samples(tables, cfg)["eval"] for cfg in configs]
  assert len(evals[0]["kind"]) == 300
  for other in evals[1:]:
    assert other.keys() == evals[0].keys()
    for name, values in evals[0].items():
      np.testing.assert_array_equal(other[name], values, err_msg=name)


def test_oracle_fields_on_eval_records_only():
  import pyarrow as pa
  oracle = pa.table({"exposure_id": [2], "p_click": pa.array([0.25], pa.float32()),
                     "p_click_no_highlight": pa.array([0.2], pa.float32()),
                     "p_click_no_affinity": pa.array([0.1], pa.float32()),
                     "in_highlight": [True]})
  tables = _log()
  tables = type(tables)(**{**tables.__dict__, "oracle_exposures": oracle})
  out = build_samples(tables, MomentConfig())
  ev = out["eval"]
  assert ev["in_highlight"].tolist() == [-1, 1]
  np.testing.assert_allclose(ev["oracle_p_click"], [np.nan, 0.25])
  np.testing.assert_allclose(ev["oracle_p_no_affinity"], [np.nan, 0.1])
  assert (out["train"]["in_highlight"] == -1).all()


@pytest.mark.parametrize("field,value", [
    ("mode", "hourly"), ("features_at", "click"), ("window_s", 0.0), ("window_s", -30.0),
    ("long_view_s", float("nan")), ("no_click_close_s", 0), ("max_watch_s", 10.0),
    ("fast_window_s", 0.0), ("slow_window_s", 100.0), ("sv_hist_len", 10_001),
    ("lv_hist_len", -1), ("sv_hist_len", 2.5), ("first_only", "yes")])
def test_config_errors_name_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    MomentConfig(**{field: value}).validate()
  with pytest.raises(ValueError, match=field):
    build_samples(_log(), MomentConfig(**{field: value}))
