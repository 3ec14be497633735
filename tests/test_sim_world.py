"""The simulated world (small preset): determinism, event rules and each carried phenomenon;
the m3like preset's KuaiLive-M3-like timing, on a reduced m3like world."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcjax.eventlog import io as eio
from mcjax.eventlog import schema as S
from mcjax.eventlog import validate
from mcjax.sim import config as C
from mcjax.sim import summary, world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 1
# The small world at SEED, pinned: a change of any of these is a change of the world (a new
# knob must default to today's behaviour); update them only when the world is meant to change.
SMALL_ROWS = 320_630
SMALL_COUNTS = {"live/exposure": 9_930, "live/click": 2_659, "live/watch_end": 2_659,
                "live/like": 82_468, "live/comment": 20_683, "live/gift": 1_234,
                "live/follow": 543, "short_video/exposure": 89_496,
                "short_video/watch_end": 89_496, "short_video/like": 20_216,
                "short_video/follow": 1_246}
SMALL_DIGEST = "ef8dc28cc0dae0edd1df2a7be43a62a5956b8a4b7c112cfe42d1342fa1327263"
# A reduced m3like world: the full preset's rates and timing over a whole day, with fewer
# users, live exposures and short videos (a fraction of a second to generate).
M3LIKE_REDUCED = dict(users=400, live_exposures=20_000, sv_ratio=1.0)


def _digests(log_dir):
  out = {}
  for root, _, files in os.walk(log_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, log_dir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _content_digest(events: pa.Table) -> str:
  """sha256 of the decoded event columns (independent of the Parquet writer's version)."""
  h = hashlib.sha256()
  for name in events.column_names:
    a = events[name].to_numpy(zero_copy_only=False)
    h.update("\x00".join(a.astype(str)).encode() if a.dtype == object
             else np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _live_parts(ev):
  """(exposure ts by id, click rows mask, watch_end values) of the live domain."""
  live = ev["domain"] == S.LIVE
  exposed = live & (ev["event"] == S.EXPOSURE)
  ex_ts = dict(zip(ev["exposure_id"][exposed], ev["ts_ms"][exposed]))
  click = live & (ev["event"] == S.CLICK)
  return ex_ts, click, ev["value"][live & (ev["event"] == S.WATCH_END)]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
  return world.build(str(tmp_path_factory.mktemp("sim") / "world"), "small", SEED)


@pytest.fixture(scope="module")
def ev(log_dir):
  t = eio.read_events(log_dir)
  out = {c: t[c].to_numpy() for c in ("ts_ms", "exposure_id", "item_id", "value", "user_id")}
  out["domain"] = t["domain"].to_numpy(zero_copy_only=False).astype(str)
  out["event"] = t["event"].to_numpy(zero_copy_only=False).astype(str)
  return out


@pytest.fixture(scope="module")
def stats(log_dir):
  return summary.summarize(log_dir)


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory):
  return world.build(str(tmp_path_factory.mktemp("sim") / "m3like"), "m3like", SEED,
                     **M3LIKE_REDUCED)


@pytest.fixture(scope="module")
def m3_ev(m3_dir):
  t = eio.read_events(m3_dir)
  out = {c: t[c].to_numpy() for c in ("ts_ms", "exposure_id", "value")}
  out["domain"] = t["domain"].to_numpy(zero_copy_only=False).astype(str)
  out["event"] = t["event"].to_numpy(zero_copy_only=False).astype(str)
  return out


def test_same_seed_same_bytes_other_seed_differs(log_dir, tmp_path):
  again = world.build(str(tmp_path / "again"), "small", SEED)
  other = world.build(str(tmp_path / "other"), "small", SEED + 1)
  first = _digests(log_dir)
  assert set(first) >= {S.EVENTS_FILE, *S.SIDE_TABLES, "meta.json",
                        *(f"{S.ORACLE_DIR}/{n}" for n in S.ORACLE_TABLES)}
  assert _digests(again) == first
  assert _digests(other)[S.EVENTS_FILE] != first[S.EVENTS_FILE]


def test_small_world_is_pinned(log_dir, stats):
  events = eio.read_events(log_dir)
  assert events.num_rows == SMALL_ROWS
  assert stats["event_counts"] == SMALL_COUNTS
  assert _content_digest(events) == SMALL_DIGEST


def test_log_passes_the_validator(log_dir):
  validate.validate_log(log_dir)


def test_only_events_allowed_by_domain(ev):
  pairs = set(zip(ev["domain"], ev["event"]))
  for d, e in pairs:
    assert e in S.DOMAIN_EVENTS[d], (d, e)
  # Every allowed event actually occurs.
  assert pairs == {(d, e) for d in S.DOMAINS for e in S.DOMAIN_EVENTS[d]}


def test_sorted_and_ordered_within_exposures(ev):
  ts, xid = ev["ts_ms"], ev["exposure_id"]
  assert np.all((np.diff(ts) > 0) | ((np.diff(ts) == 0) & (np.diff(xid) >= 0)))
  order = np.lexsort((np.arange(len(xid)), xid))   # stable by exposure, then log order
  x, t, e, d = xid[order], ts[order], ev["event"][order], ev["domain"][order]
  first = np.concatenate([[True], x[1:] != x[:-1]])
  assert np.all(e[first] == S.EXPOSURE) and np.sum(e == S.EXPOSURE) == first.sum()
  exp_ts = np.repeat(t[first], np.diff(np.append(np.flatnonzero(first), len(x))))
  assert np.all(t >= exp_ts)
  # Live: one click, one watch_end after it, interactions inside [click, watch_end].
  live = d == S.LIVE
  clicks = {k: v for k, v in zip(x[live & (e == S.CLICK)], t[live & (e == S.CLICK)])}
  live_end = live & (e == S.WATCH_END)
  ends = {k: v for k, v in zip(x[live_end], t[live_end])}
  assert len(clicks) == np.sum(e == S.CLICK) and clicks.keys() == ends.keys()
  assert all(ends[k] >= clicks[k] for k in clicks)
  inter = live & np.isin(e, [S.LIKE, S.COMMENT, S.GIFT, S.FOLLOW])
  c = np.array([clicks[k] for k in x[inter]])
  w = np.array([ends[k] for k in x[inter]])
  assert np.all((t[inter] >= c) & (t[inter] <= w))
  # Short video: one watch_end per play, like/follow during the play.
  sv = d == S.SHORT_VIDEO
  sv_end = dict(zip(x[sv & (e == S.WATCH_END)], t[sv & (e == S.WATCH_END)]))
  assert len(sv_end) == np.sum(sv & (e == S.EXPOSURE)) == np.sum(sv & (e == S.WATCH_END))
  sv_inter = sv & np.isin(e, [S.LIKE, S.FOLLOW])
  assert np.all(t[sv_inter] <= np.array([sv_end[k] for k in x[sv_inter]]))


def test_exposure_ratio_and_live_sparse_share(stats):
  assert 7.0 <= stats["sv_per_live_ratio"] <= 11.0
  assert abs(stats["live_sparse_share"] - C.PRESETS["small"].live_sparse_share) < 0.1


def test_live_sparse_users_have_rich_short_video_history(log_dir, ev):
  users = eio.read_side(log_dir, "users.parquet")["user_id"].to_numpy()
  live_n = np.bincount(ev["user_id"][(ev["domain"] == S.LIVE) & (ev["event"] == S.EXPOSURE)],
                       minlength=len(users))
  sv_n = np.bincount(ev["user_id"][(ev["domain"] == S.SHORT_VIDEO) & (ev["event"] == S.EXPOSURE)],
                     minlength=len(users))
  sparse = live_n < summary.SPARSE_LIVE_EXPOSURES
  assert np.median(sv_n[sparse]) >= 50
  assert np.median(sv_n[sparse]) > 0.5 * np.median(sv_n[~sparse])


def test_click_rate_higher_inside_highlights(stats, log_dir):
  assert stats["ctr_in_highlight"] > 1.5 * stats["ctr_outside_highlight"]
  hl = eio.read_oracle(log_dir, "highlights.parquet")
  minutes = (hl["end_ms"].to_numpy() - hl["start_ms"].to_numpy()) / 60_000
  assert minutes.min() >= 1.0 and minutes.max() <= 6.0 and np.median(minutes) >= 2.0
  per_live = np.bincount(np.unique(hl["live_id"].to_numpy(), return_inverse=True)[1])
  assert per_live.max() >= 2


def test_in_highlight_matches_highlight_table(log_dir, ev):
  hl = eio.read_oracle(log_dir, "highlights.parquet")
  ora = eio.read_oracle(log_dir, "exposures.parquet")
  m = (ev["domain"] == S.LIVE) & (ev["event"] == S.EXPOSURE)
  xid, item, ts = ev["exposure_id"][m], ev["item_id"][m], ev["ts_ms"][m]
  inside = np.zeros(len(xid), bool)
  for live, s, e in zip(*(hl[c].to_numpy() for c in ("live_id", "start_ms", "end_ms"))):
    inside |= (item == live) & (ts >= s) & (ts < e)
  o = dict(zip(ora["exposure_id"].to_numpy(), ora["in_highlight"].to_numpy()))
  assert np.array_equal(inside, np.array([o[k] for k in xid]))


def test_oracle_aucs(stats):
  assert stats["auc_p_click"] > stats["auc_p_click_no_highlight"] + 0.01
  assert stats["auc_p_click"] > stats["auc_p_click_no_affinity"] + 0.05


def test_effects_observable_from_the_log(stats):
  obs = stats["observability"]
  assert obs["highlight"]["share"] > 0.25, obs
  assert obs["affinity"]["share"] > 0.4, obs


def test_evening_heavy_lives_of_tens_of_minutes_to_hours(log_dir):
  lives = pq.read_table(os.path.join(log_dir, "lives.parquet"))
  start, end = lives["start_ms"].to_numpy(), lives["end_ms"].to_numpy()
  hour = (start - C.EPOCH_MS) / 3_600_000 % 24
  assert np.mean((hour >= 18) & (hour < 24)) > 0.4      # 0.25 if uniform
  hours = np.arange(0, 24, 0.25)
  assert 20.0 <= hours[np.argmax(C.live_start_curve(hours))] <= 23.0
  minutes = (end - start) / 60_000
  assert minutes.min() >= 5 and 20 <= np.median(minutes) <= 180 and minutes.max() >= 60


def test_watch_times_and_gifts(ev):
  watch = ev["value"][(ev["domain"] == S.LIVE) & (ev["event"] == S.WATCH_END)]
  assert np.mean(watch < 3.0) > 0.05 and np.mean(watch >= 60.0) > 0.3
  gifts = ev["value"][ev["event"] == S.GIFT]
  assert gifts.min() > 0 and gifts.max() > 10 * np.median(gifts)
  top = np.sort(gifts)[::-1][:max(len(gifts) // 100, 1)]
  assert top.sum() > 0.1 * gifts.sum()                   # heavy tail: top 1% > 10% of value


def test_short_video_watch_end_is_seconds_played(log_dir, ev):
  # value = progress x the video's duration_s, cut to whole ms: ts = exposure ts + value.
  sv = ev["domain"] == S.SHORT_VIDEO
  start = ev["event"] == S.EXPOSURE
  end = ev["event"] == S.WATCH_END
  exposed = dict(zip(ev["exposure_id"][sv & start], ev["ts_ms"][sv & start]))
  x, played = ev["exposure_id"][sv & end], ev["value"][sv & end]
  np.testing.assert_array_equal(ev["ts_ms"][sv & end] - [exposed[k] for k in x],
                                np.round(played * 1000).astype(np.int64))
  videos = eio.read_side(log_dir, "videos.parquet")
  duration = dict(zip(videos["video_id"].to_numpy(), videos["duration_s"].to_numpy()))
  progress = played / np.array([duration[k] for k in ev["item_id"][sv & end]])
  assert progress.min() > 0.009 and progress.max() <= 3.0 + 1e-3
  assert 0.2 < np.median(progress) < 1.5 and np.mean(progress > 1.0) > 0.05


def test_summary_names_events_it_does_not_know(log_dir, tmp_path):
  # An older log (short-video plays as play_end) is refused, not miscounted.
  t = eio.read_events(log_dir).slice(0, 3)
  t = t.set_column(t.column_names.index("event"), "event",
                   pa.array(["exposure", "play_end", "exposure"]))
  pq.write_table(t, tmp_path / S.EVENTS_FILE)
  with pytest.raises(ValueError, match=r"column 'event': unknown value\(s\) \['play_end'\]"):
    summary.summarize(str(tmp_path))


def test_likes_and_comments_several_per_watch(ev):
  live = ev["domain"] == S.LIVE
  for name in (S.LIKE, S.COMMENT):
    per = np.bincount(np.unique(ev["exposure_id"][live & (ev["event"] == name)],
                                return_inverse=True)[1])
    assert per.max() >= 3


def test_generate_launcher(tmp_path):
  out = tmp_path / "gen"
  r = subprocess.run([sys.executable, "-m", "launch.generate", "--preset=small", f"--out={out}",
                      "--seed=3", "--users=200", "--hours=20"], cwd=REPO, capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  meta = (out / "meta.json").read_text()
  assert '"preset": "small"' in meta and '"users": 200' in meta and '"seed": 3' in meta


def test_bad_flag_values_are_named():
  with pytest.raises(ValueError, match="--preset"):
    C.make_config("huge")
  with pytest.raises(ValueError, match="--users"):
    C.make_config("small", users=0)


def test_authors_in_both_domains_and_click_delays(log_dir, ev):
  t = eio.read_events(log_dir, columns=["author_id", "domain"])
  a, d = t["author_id"].to_numpy(), t["domain"].to_numpy(zero_copy_only=False).astype(str)
  both = np.intersect1d(a[d == S.LIVE], a[d == S.SHORT_VIDEO])
  assert len(both) >= 0.5 * len(np.unique(a[d == S.LIVE]))
  live = ev["domain"] == S.LIVE
  ex = dict(zip(ev["exposure_id"][live & (ev["event"] == S.EXPOSURE)],
                ev["ts_ms"][live & (ev["event"] == S.EXPOSURE)]))
  click = live & (ev["event"] == S.CLICK)
  delay = ev["ts_ms"][click] - np.array([ex[k] for k in ev["exposure_id"][click]])
  assert delay.min() >= 1000 and delay.max() <= 30_000 and np.median(delay) < 10_000


def test_m3like_changes_timing_and_rates_only():
  m3, default = C.PRESETS["m3like"], C.PRESETS["default"]
  sizes = ("users", "authors", "hours", "topics", "videos_per_author", "live_exposures",
           "sv_ratio")
  assert all(getattr(m3, k) == getattr(default, k) for k in sizes)
  for name in ("small", "default"):   # the new knobs keep the older worlds as they were
    cfg = C.PRESETS[name]
    assert (cfg.click_delay_min_s, cfg.click_delay_max_s) == (1.0, 30.0)


def test_m3like_log_passes_the_validator(m3_dir):
  validate.validate_log(m3_dir)


def test_m3like_entries_at_the_impression(m3_ev):
  ex_ts, click, _ = _live_parts(m3_ev)
  delay = m3_ev["ts_ms"][click] - np.array([ex_ts[k] for k in m3_ev["exposure_id"][click]])
  assert delay.min() >= 0 and delay.max() <= C.PRESETS["m3like"].click_delay_max_s * 1000
  assert np.median(delay) <= 2_000 and np.mean(delay <= 2_000) > 0.95


def test_m3like_entry_rate(m3_dir, m3_ev):
  # The rate hardly depends on the sizes: 7.3% on the full preset (seed 0), 7.6-8.5% here
  # (seeds 0-3).
  ex_ts, click, _ = _live_parts(m3_ev)
  assert 0.05 <= click.sum() / len(ex_ts) <= 0.10
  p_click = eio.read_oracle(m3_dir, "exposures.parquet")["p_click"].to_numpy()
  assert 0.05 <= p_click.mean() <= 0.10


def test_m3like_highlights_cover_a_fifth_of_room_time(m3_dir):
  lives = eio.read_side(m3_dir, "lives.parquet")
  hl = eio.read_oracle(m3_dir, "highlights.parquet")
  on_air = np.sum(lives["end_ms"].to_numpy() - lives["start_ms"].to_numpy())
  share = np.sum(hl["end_ms"].to_numpy() - hl["start_ms"].to_numpy()) / on_air
  assert 0.15 <= share <= 0.25, share


def test_m3like_heavy_watch_tail(m3_ev):
  _, _, watch = _live_parts(m3_ev)
  p50, p99 = np.quantile(watch, [0.5, 0.99])
  assert p99 / p50 >= 10 and p99 >= 10 * 60          # some visits last tens of minutes
  assert np.mean(watch < 3.0) > 0.2 and p50 <= 120   # many short ones


def _live_exposures(log_dir):
  e = summary.event_columns(log_dir)
  m = summary.mask(e, S.LIVE, S.EXPOSURE)
  return {k: e[k][m] for k in ("exposure_id", "ts_ms", "user_id", "author_id")}


def test_observable_reference_sits_between_the_offset_and_the_oracle(log_dir):
  from mcjax.sim import reference
  ts = _live_exposures(log_dir)["ts_ms"]
  lo, hi = int(ts.min()), int(ts.max())
  r = reference.reference(log_dir, lo + (hi - lo) * 7 // 10, after_ms=lo + (hi - lo) * 8 // 10)
  assert r["n"] == int((ts >= lo + (hi - lo) * 8 // 10).sum())
  assert r["oracle_no_affinity_auc"] + 0.05 < r["lr_auc"] < r["oracle_auc"], r
  assert (r["oracle_no_affinity_auc"] < r["oracle_affinity_estimated_auc"]
          < r["oracle_auc"]), r
  assert 0.3 < r["affinity_r2"] < 1.0, r
  # estimating the highlight term too loses more of the oracle, but not all of the highlight
  assert (r["oracle_no_affinity_auc"] < r["oracle_estimated_auc"]
          <= r["oracle_affinity_estimated_auc"]), r
  assert 0.0 < r["highlight_r2"] < 1.0, r
  assert r["lr_logloss"] > 0


def test_observable_reference_features_read_only_the_past(log_dir):
  """Each exposure's history features from the whole log equal those from the events strictly
  before its time (dropping every event at or after the query time changes nothing)."""
  from mcjax.sim import reference
  authors = eio.read_side(log_dir, "authors.parquet")
  x = _live_exposures(log_dir)
  e = reference.load_events(log_dir)
  q = {"user": x["user_id"], "author": x["author_id"], "ts": x["ts_ms"]}
  whole = reference.history_features(e, authors, q)
  rng = np.random.default_rng(0)
  for i in rng.choice(len(x["ts_ms"]), 12, replace=False):
    past = {k: v[e["ts_ms"] < x["ts_ms"][i]] for k, v in e.items()}
    one = {k: v[i:i + 1] for k, v in q.items()}
    np.testing.assert_array_equal(reference.history_features(past, authors, one), whole[i:i + 1])
  assert np.ptp(whole, axis=0).min() > 0  # every column varies


def test_observable_reference_refuses_a_log_without_oracle(log_dir, tmp_path):
  import shutil
  from mcjax.sim import reference
  bare = str(tmp_path / "bare")
  shutil.copytree(log_dir, bare, ignore=shutil.ignore_patterns("_oracle"))
  with pytest.raises(ValueError, match="has no oracle"):
    reference.reference(bare, 0)
