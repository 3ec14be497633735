"""Moment engine: crowd features with known counts, history snapshots, no future leakage."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from mcjax.eventlog import schema as S
from mcjax.moment import MomentConfig
from mcjax.moment.engine import build_samples
from mcjax.moment.crowd import CrowdIndex
from mcjax.moment.synth import EPOCH_MS, random_log, tables_from_events
from mcjax.contract import schema as SS

EC = S.EVENT_CODE


def test_crowd_counts_windows_and_viewers():
  t = lambda ms: EPOCH_MS + ms  # noqa: E731
  rows = [  # (live, ms, event, value)
      (5, 0, "exposure", 0), (5, 10_000, "exposure", 0), (5, 280_000, "exposure", 0),
      (5, 290_000, "exposure", 0), (5, 300_000, "exposure", 0),  # at q: not counted
      (5, 270_000, "click", 0),   # at q - 30 s: outside (q - 30 s, q), inside 5m
      (5, 285_000, "click", 0), (5, 100, "like", 0), (5, 299_999, "like", 0),
      (5, 1_000, "gift", 2.5), (5, 295_000, "gift", 5.0), (5, 200_000, "comment", 0),
      (6, 290_000, "exposure", 0),  # another live
  ]
  live = np.array([r[0] for r in rows])
  ts = np.array([t(r[1]) for r in rows])
  code = np.array([EC[r[2]] for r in rows])
  value = np.array([r[3] for r in rows], float)
  # Viewers: one entered at 270 s and leaves at q (still watching at q), one left at 290 s,
  # one still watching (no watch_end yet).
  index = CrowdIndex(live, ts, code, value,
                     enter_live=np.array([5, 5, 5]), enter_ts=t(np.array([270_000, 285_000,
                                                                            150_000])),
                     leave_live=np.array([5, 5]), leave_ts=t(np.array([300_000, 290_000])))
  q = np.array([t(300_000), t(300_000), t(0)])
  got = index.features(np.array([5, 7, 5]), q, np.array([t(0), t(0), t(0)]))
  f = dict(zip(SS.CROWD_FEATURES, got[0].tolist()))
  assert (f["exposures_30s"], f["clicks_30s"], f["likes_30s"], f["gifts_30s"]) == (2, 1, 1, 1)
  assert (f["gift_value_30s"], f["comments_30s"], f["click_rate_30s"]) == (5.0, 0, 0.5)
  # (q - 5 min, q) is open at the live's start: the exposure at 0 is outside.
  assert (f["exposures_5m"], f["clicks_5m"], f["likes_5m"], f["gifts_5m"]) == (3, 2, 2, 2)
  assert (f["gift_value_5m"], f["comments_5m"]) == (7.5, 1)
  assert f["click_rate_5m"] == pytest.approx(2 / 3)
  assert (f["exposures_all"], f["clicks_all"], f["gifts_all"], f["gift_value_all"]) == (
      4, 2, 2, 7.5)
  assert f["click_rate_all"] == 0.5 and f["live_age_s"] == 300.0
  assert f["viewers_now"] == 2
  # A live without events, and a query at the live's start, see nothing.
  assert got[1, :SS.CROWD_INDEX["live_age_s"]].sum() == 0
  assert got[2].sum() == 0


def _history_log():
  def ev(t_s, xid, event, value=0.0, domain="live", item=100, author=7, user=1):
    return (EPOCH_MS + int(t_s * 1000), user, xid, domain, item, author, event, value)
  # Plays of 3, 6, ..., 15 s of 30 s videos: progress 0.1 .. 0.5.
  sv = [ev(t, 10 + i, "watch_end", 3.0 * (i + 1), "short_video", 500 + i, 9)
        for i, t in enumerate((10, 20, 30, 40, 50))]
  sv += [ev(t - 5, 10 + i, "exposure", 0, "short_video", 500 + i, 9)
         for i, t in enumerate((10, 20, 30, 40, 50))]
  sv += [ev(35, 12, "like", 0, "short_video", 502, 9),    # before every query
         ev(70, 14, "follow", 0, "short_video", 504, 9),  # after the eval query
         ev(5, 99, "exposure", 0, "short_video", 600, 9, user=2),  # another user
         ev(6, 99, "watch_end", 30.0, "short_video", 600, 9, user=2),
         ev(95, 16, "exposure", 0, "short_video", 506, 9),  # ends exactly at L1's exposure
         ev(100, 16, "watch_end", 27.0, "short_video", 506, 9)]
  live = [ev(100, 1, "exposure"), ev(101, 1, "click"), ev(105, 1, "like"),
          ev(170, 1, "comment"), ev(200, 1, "watch_end", 99.0),           # L1
          ev(150, 2, "exposure", item=101),                              # L2
          ev(160, 3, "exposure", item=102), ev(162, 3, "click", item=102),
          ev(400, 3, "watch_end", 238.0, item=102),                      # L3
          ev(300, 4, "exposure", item=103)]                              # L4
  return tables_from_events(sorted(sv + live))


def _seq(table, row, prefix, name):
  off = table[f"{prefix}_offsets"]
  return table[name][off[row]:off[row + 1]].tolist()


def _row(table, exposure_id, kind):
  hits = np.flatnonzero((table["exposure_id"] == exposure_id) & (table["kind"] == kind))
  assert len(hits) == 1
  return int(hits[0])


def test_short_video_history_truncated_recent_first_with_causal_actions():
  out = build_samples(_history_log(), MomentConfig(sv_hist_len=3, features_at="sample"))
  ev, train = out["eval"], out["train"]
  r = _row(ev, 1, SS.EVAL)  # q = 100 s: the play ending at 100 s is not before q
  assert _seq(ev, r, "sv", "sv_item") == [504, 503, 502]
  assert _seq(ev, r, "sv", "sv_ts_ms") == [EPOCH_MS + 50_000, EPOCH_MS + 40_000,
                                           EPOCH_MS + 30_000]
  assert _seq(ev, r, "sv", "sv_progress") == pytest.approx([0.5, 0.4, 0.3])
  assert _seq(ev, r, "sv", "sv_action") == [2, 0, 1]  # follow at 70 s, like at 35 s
  assert _seq(ev, r, "sv", "sv_category") == [504 % 8, 503 % 8, 502 % 8]
  assert _seq(ev, r, "sv", "sv_tag") == [504 % 11, 503 % 11, 502 % 11]
  assert _seq(ev, r, "sv", "sv_author") == [9, 9, 9]
  # L1's first real-time sample at 130 s (features_at="sample") sees it.
  r = int(np.flatnonzero(train["exposure_id"] == 1)[0])
  assert train["sample_ts_ms"][r] == EPOCH_MS + 130_000
  assert _seq(train, r, "sv", "sv_item") == [506, 504, 503]
  out = build_samples(_history_log(), MomentConfig(sv_hist_len=10))
  r = _row(out["eval"], 1, SS.EVAL)
  assert _seq(out["eval"], r, "sv", "sv_item") == [504, 503, 502, 501, 500]
  # features_at="exposure": every sample of L1 has the history as of 100 s.
  train = out["train"]
  for r in np.flatnonzero(train["exposure_id"] == 1):
    assert _seq(train, r, "sv", "sv_item") == [504, 503, 502, 501, 500]


def test_live_history_excludes_current_exposure_and_future_actions():
  out = build_samples(_history_log(), MomentConfig(lv_hist_len=3, features_at="sample"))
  ev, train = out["eval"], out["train"]
  r = _row(ev, 3, SS.EVAL)  # L3 at 160 s: L2, L1; L1's watch_end (200 s), comment (170 s) later
  assert _seq(ev, r, "lv", "lv_item") == [101, 100]
  assert _seq(ev, r, "lv", "lv_ts_ms") == [EPOCH_MS + 150_000, EPOCH_MS + 100_000]
  assert _seq(ev, r, "lv", "lv_watch_s") == [0.0, 0.0]
  assert _seq(ev, r, "lv", "lv_action") == [0, 1 | 2]
  assert _seq(ev, r, "lv", "lv_category") == [101 % 7, 100 % 7]
  assert _seq(ev, _row(ev, 1, SS.EVAL), "lv", "lv_item") == []
  # L3's close at 400 s: L4, L2, L1 (L3 itself left out although it is before q).
  r = _row(train, 3, SS.CLOSE)
  assert train["sample_ts_ms"][r] == EPOCH_MS + 400_000
  assert _seq(train, r, "lv", "lv_item") == [103, 101, 100]
  assert _seq(train, r, "lv", "lv_watch_s") == [0.0, 0.0, 99.0]
  assert _seq(train, r, "lv", "lv_action") == [0, 0, 1 | 2 | 4]
  # L1's real-time sample at 130 s: its own exposure is the only past one -> empty.
  r = int(np.flatnonzero(train["exposure_id"] == 1)[0])
  assert _seq(train, r, "lv", "lv_item") == []
  # Truncation keeps the most recent.
  out = build_samples(_history_log(), MomentConfig(lv_hist_len=2, features_at="sample"))
  assert _seq(out["train"], _row(out["train"], 3, SS.CLOSE), "lv", "lv_item") == [103, 101]


FEATURES = [f.name for f in SS.FIELDS if f.name not in (
    "sample_ts_ms", "kind", "labels", "label_mask", "in_highlight") and not f.name.startswith(
        "oracle_")]


def _features(table, r):
  out = {}
  for name in FEATURES:
    f = SS.FIELD[name]
    out[name] = (_seq(table, r, name[:2], name) if f.is_sequence
                 else np.asarray(table[name][r]).tolist())
  return out


def _perturb_after(tables, t_cut, seed):
  """Shifts, rescales, deletes and adds events after t_cut (side tables unchanged)."""
  rng = np.random.default_rng(seed)
  ev = {c: tables.events[c].to_numpy(zero_copy_only=False) for c in tables.events.column_names}
  after = ev["ts_ms"] > t_cut
  n = len(after)
  ev["value"] = np.where(after, ev["value"] * 1.7 + 0.5, ev["value"])
  ev["ts_ms"] = np.where(after, ev["ts_ms"] + rng.integers(0, 20_000, n), ev["ts_ms"])
  keep = ~after | (rng.random(n) > 0.3)
  ev = {c: v[keep] for c, v in ev.items()}
  # Copies of random events of any exposure, moved after t_cut, with another event kind.
  src = rng.integers(0, len(ev["ts_ms"]), 400)
  add = {c: v[src].copy() for c, v in ev.items()}
  add["ts_ms"] = np.maximum(add["ts_ms"], t_cut) + rng.integers(1, 120_000, len(src))
  live = add["domain"] == S.LIVE
  add["event"] = np.where(live, rng.choice(["click", "like", "comment", "gift", "follow",
                                            "watch_end", "exposure"], len(src)),
                          rng.choice(["like", "follow", "watch_end"], len(src)))
  add["value"] = rng.random(len(src)) * 100
  # Brand-new exposures after t_cut.
  new = {c: v[:50].copy() for c, v in add.items()}
  new["exposure_id"] = 10_000_000 + np.arange(50)
  new["event"] = np.full(50, "exposure")
  merged = {c: np.concatenate([ev[c], add[c], new[c]]) for c in ev}
  events = pa.table({c: pa.array(merged[c], S.EVENT_SCHEMA.field(c).type)
                     for c in tables.events.column_names})
  return dataclasses.replace(tables, events=events)


@pytest.mark.parametrize("features_at", ["exposure", "sample"])
def test_no_leakage_from_the_future(features_at):
  tables = random_log(400, users=25, lives=4, hours=0.5, seed=7)
  t_cut = EPOCH_MS + 15 * 60_000
  changed = _perturb_after(tables, t_cut, seed=1)
  for cfg in (MomentConfig(features_at=features_at, window_s=20),
              MomentConfig(mode="fast_slow", fast_window_s=60, slow_window_s=240,
                           features_at=features_at)):
    a, b = build_samples(tables, cfg), build_samples(changed, cfg)
    assert b["stats"]["events"] != a["stats"]["events"]
    for kind in ("train", "eval"):
      ta, tb = a[kind], b[kind]
      at_sample = kind == "train" and features_at == "sample"
      qa = ta["sample_ts_ms"] if at_sample else ta["exposure_ts_ms"]
      qb = tb["sample_ts_ms"] if at_sample else tb["exposure_ts_ms"]
      in_b = {(x, q): r for r, (x, q) in enumerate(zip(tb["exposure_id"].tolist(),
                                                       qb.tolist()))}
      checked = 0
      for r in np.flatnonzero(qa <= t_cut):
        rb = in_b[(int(ta["exposure_id"][r]), int(qa[r]))]
        assert _features(ta, r) == _features(tb, rb), (kind, r)
        checked += 1
      assert checked > 100
    # Every training sample whose time is <= t_cut is identical, labels included (eval
    # records carry final labels, which the future decides).
    ta, tb = a["train"], b["train"]
    early_a = np.flatnonzero(ta["sample_ts_ms"] <= t_cut)
    early_b = np.flatnonzero(tb["sample_ts_ms"] <= t_cut)
    assert len(early_a) == len(early_b) > 100
    for ra, rb in zip(early_a, early_b):
      assert _features(ta, ra) == _features(tb, rb)
      for name in ("sample_ts_ms", "kind", "labels", "label_mask"):
        np.testing.assert_array_equal(ta[name][ra], tb[name][rb])
