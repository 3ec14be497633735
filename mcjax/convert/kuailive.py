"""KuaiLive (live domain only) -> event log.

Mapping (see the public dataset notes): a click.csv row is an exposure + click at its
timestamp and a watch_end at timestamp + watch_live_time (value in seconds); a negative.csv
row is an exposure without click; like/comment/gift rows attach to the open watch of the same
(user, live) (the click whose span contains their timestamp; rows matching no watch are
dropped and counted); a gift's value is its gift_price. Side tables come from user.csv,
streamer.csv and room.csv (a room listed once per day is merged; a null end becomes the
room's last event time).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mcjax.convert import assemble as A
from mcjax.convert import sources as src_
from mcjax.eventlog import schema as S

_ACTION = ["user_id", "live_id", "streamer_id", "timestamp"]
COLUMNS = {
    "user.csv": ["user_id", "age", "gender", "accu_watch_live_cnt"],
    "streamer.csv": ["streamer_id", "fans_user_num"],
    "room.csv": ["live_id", "streamer_id", "start_timestamp", "end_timestamp",
                 "live_content_category"],
    "click.csv": _ACTION + ["watch_live_time"],
    "negative.csv": _ACTION,
    "like.csv": _ACTION,
    "comment.csv": _ACTION,
    "gift.csv": _ACTION + ["gift_price"],
}


def _actions(src: str, name: str, stats: A.ConvertStats):
  """Reads an action file; returns (user, live, streamer, ts, table) without bad rows."""
  t = src_.read_source(src, name, COLUMNS[name])
  stats.rows_read[name] = t.num_rows
  u, l, s = (src_.ids(t.column(c)) for c in _ACTION[:3])
  ts = src_.times_ms(t.column("timestamp"))
  keep = stats.drop(f"{name}: null or negative id/timestamp",
                    (u < 0) | (l < 0) | (s < 0) | (ts < 0))
  return u[keep], l[keep], s[keep], ts[keep], t.filter(pa.array(keep))


def convert(src: str) -> tuple[pa.Table, dict[str, pa.Table], A.ConvertStats]:
  """Reads a KuaiLive folder; returns (events, side tables, stats), not yet validated."""
  stats = A.ConvertStats()
  b = A.LogBuilder()
  u, l, s, ts, t = _actions(src, "click.csv", stats)
  wlt = src_.numbers(t.column("watch_live_time"), fill=np.nan)
  keep = stats.drop("click.csv: null or negative watch_live_time", ~(wlt >= 0))
  u, l, s, ts, wlt = u[keep], l[keep], s[keep], ts[keep], wlt[keep]
  end = ts + np.round(wlt).astype(np.int64)
  clicks = b.add_exposures(ts, u, S.LIVE, l, s)
  b.add_events(clicks, ts, S.CLICK, 0.0)
  b.add_events(clicks, end, S.WATCH_END, wlt / 1000.0)
  nu, nl, ns, nts, _ = _actions(src, "negative.csv", stats)
  b.add_exposures(nts, nu, S.LIVE, nl, ns)
  for name, event in (("like.csv", S.LIKE), ("comment.csv", S.COMMENT), ("gift.csv", S.GIFT)):
    qu, ql, _, qts, qt = _actions(src, name, stats)
    value = np.zeros(qts.size)
    if event == S.GIFT:
      value = src_.numbers(qt.column("gift_price"), fill=np.nan)
      ok = stats.drop(f"{name}: gift_price null or <= 0", ~(value > 0))
      qu, ql, qts, value = qu[ok], ql[ok], qts[ok], value[ok]
    span = A.attach_to_spans(u, l, ts, end, qu, ql, qts)
    hit = stats.drop(f"{name}: no open watch of the same (user, live)", span < 0)
    b.add_events(clicks[span[hit]], qts[hit], event, value[hit])
  events = b.build()
  return events, _side(src, events, stats), stats


def _side(src: str, events: pa.Table, stats: A.ConvertStats) -> dict[str, pa.Table]:
  room = src_.read_source(src, "room.csv", COLUMNS["room.csv"])
  stats.rows_read["room.csv"] = room.num_rows
  lid, author = src_.ids(room.column("live_id")), src_.ids(room.column("streamer_id"))
  start = src_.times_ms(room.column("start_timestamp"))
  end = src_.times_ms(room.column("end_timestamp"))
  category = src_.name_hash(room.column("live_content_category"))
  keep = stats.drop("room.csv: null or negative id/start", (lid < 0) | (author < 0) | (start < 0))
  lives = pa.table({
      "live_id": lid[keep], "author_id": author[keep], "category": category[keep],
      "start_ms": start[keep], "end_ms": pa.array(end[keep], mask=end[keep] < 0)})
  lives = A.complete_lives(lives, events, stats)

  user = src_.read_source(src, "user.csv", COLUMNS["user.csv"])
  stats.rows_read["user.csv"] = user.num_rows
  uid = src_.ids(user.column("user_id"))
  keep = stats.drop("user.csv: null or negative user_id", uid < 0)
  users = A.first_by_key(pa.table({
      "user_id": uid[keep], "age_bucket": src_.age_codes(user.column("age"))[keep],
      "gender": src_.gender_codes(user.column("gender"))[keep],
      "activity_bucket": src_.log2_bucket(src_.numbers(user.column("accu_watch_live_cnt")))[keep],
  }, schema=S.USER_SCHEMA), "user_id")
  users = A.add_missing(users, "user_id", events.column("user_id").to_numpy(),
                        {"age_bucket": 0, "gender": 0, "activity_bucket": 0})

  streamer = src_.read_source(src, "streamer.csv", COLUMNS["streamer.csv"])
  stats.rows_read["streamer.csv"] = streamer.num_rows
  aid = src_.ids(streamer.column("streamer_id"))
  keep = stats.drop("streamer.csv: null or negative streamer_id", aid < 0)
  la, lc = A.mode_by_key(lives.column("author_id").to_numpy(),
                          lives.column("category").to_numpy())
  fans = src_.log2_bucket(src_.numbers(streamer.column("fans_user_num")))[keep]
  authors = A.first_by_key(pa.table({
      "author_id": aid[keep], "category": A.lookup(la, lc, aid[keep], 0).astype(np.int32),
      "fans_bucket": fans, "is_live_author": np.ones(fans.size, bool),
      "is_video_author": np.zeros(fans.size, bool)}, schema=S.AUTHOR_SCHEMA), "author_id")
  more = np.r_[la, events.column("author_id").to_numpy()]
  authors = A.add_missing(authors, "author_id", more, {
      "category": A.lookup(la, lc, more, 0), "fans_bucket": 0, "is_live_author": True,
      "is_video_author": False})
  videos = S.VIDEO_SCHEMA.empty_table()
  return {"users.parquet": users, "authors.parquet": authors, "lives.parquet": lives,
          "videos.parquet": videos}
