"""KuaiLive (live domain only) -> event log.

Mapping (see the public dataset notes): a click.csv row is an exposure + click at its
timestamp and a watch_end at timestamp + watch_live_time (value in seconds); a negative.csv
row is an exposure without click; like/comment/gift rows attach to the open watch of the same
(user, live) (the click whose span contains their timestamp; rows matching no watch are
dropped and counted); a gift's value is its gift_price. Side tables come from user.csv,
streamer.csv and room.csv (a room listed once per day is merged; a null end becomes the
room's last event time). Ids and times are read by ``sources`` (``tz``: the zone of local ISO
times); rows with a null id or time are dropped and counted per column.
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


def _actions(src: str, name: str, stats: A.ConvertStats, tz: str | None):
  """Reads an action file; returns (user, live, streamer, ts, table) without null rows."""
  t, c = A.read_keyed(src, name, COLUMNS[name], stats, ids=_ACTION[:3], times=["timestamp"],
                      tz=tz)
  return c["user_id"], c["live_id"], c["streamer_id"], c["timestamp"], t


def convert(src: str, tz: str | None = None
            ) -> tuple[pa.Table, dict[str, pa.Table], A.ConvertStats]:
  """Reads a KuaiLive folder; returns (events, side tables, stats), not yet validated.

  ``tz``: the zone of local (zone-less) ISO times in the files; None refuses them.
  """
  stats = A.ConvertStats()
  b = A.LogBuilder()
  u, l, s, ts, t = _actions(src, "click.csv", stats, tz)
  wlt = src_.numbers(t.column("watch_live_time"), fill=np.nan)
  keep = stats.drop("click.csv: null or negative watch_live_time", ~(wlt >= 0))
  u, l, s, ts, wlt = u[keep], l[keep], s[keep], ts[keep], wlt[keep]
  end = ts + np.round(wlt).astype(np.int64)
  clicks = b.add_exposures(ts, u, S.LIVE, l, s)
  b.add_events(clicks, ts, S.CLICK, 0.0)
  b.add_events(clicks, end, S.WATCH_END, wlt / 1000.0)
  nu, nl, ns, nts, _ = _actions(src, "negative.csv", stats, tz)
  b.add_exposures(nts, nu, S.LIVE, nl, ns)
  for name, event in (("like.csv", S.LIKE), ("comment.csv", S.COMMENT), ("gift.csv", S.GIFT)):
    qu, ql, _, qts, qt = _actions(src, name, stats, tz)
    value = np.zeros(qts.size)
    if event == S.GIFT:
      value = src_.numbers(qt.column("gift_price"), fill=np.nan)
      ok = stats.drop(f"{name}: gift_price null or <= 0", ~(value > 0))
      qu, ql, qts, value = qu[ok], ql[ok], qts[ok], value[ok]
    span = A.attach_to_spans(u, l, ts, end, qu, ql, qts)
    hit = stats.drop(f"{name}: no open watch of the same (user, live)", span < 0)
    b.add_events(clicks[span[hit]], qts[hit], event, value[hit])
  events = b.build()
  return events, _side(src, events, stats, tz), stats


def _side(src: str, events: pa.Table, stats: A.ConvertStats, tz) -> dict[str, pa.Table]:
  room, c = A.read_keyed(src, "room.csv", COLUMNS["room.csv"], stats,
                         ids=["live_id", "streamer_id"], times=["start_timestamp"],
                         optional_times=["end_timestamp"], tz=tz)
  end = c["end_timestamp"]
  lives = pa.table({
      "live_id": c["live_id"], "author_id": c["streamer_id"],
      "category": src_.name_hash(room.column("live_content_category")),
      "start_ms": c["start_timestamp"], "end_ms": pa.array(end, mask=end < 0)})
  lives = A.complete_lives(lives, events, stats)

  user, c = A.read_keyed(src, "user.csv", COLUMNS["user.csv"], stats, ids=["user_id"])
  users = A.first_by_key(pa.table({
      "user_id": c["user_id"], "age_bucket": src_.age_codes(user.column("age")),
      "gender": src_.gender_codes(user.column("gender")),
      "activity_bucket": src_.log2_bucket(src_.numbers(user.column("accu_watch_live_cnt"))),
  }, schema=S.USER_SCHEMA), "user_id", stats, "user.csv")
  users = A.add_missing(users, "user_id", events.column("user_id").to_numpy(),
                        {"age_bucket": 0, "gender": 0, "activity_bucket": 0})

  streamer, c = A.read_keyed(src, "streamer.csv", COLUMNS["streamer.csv"], stats,
                             ids=["streamer_id"])
  aid = c["streamer_id"]
  la, lc = A.mode_by_key(lives.column("author_id").to_numpy(),
                          lives.column("category").to_numpy())
  fans = src_.log2_bucket(src_.numbers(streamer.column("fans_user_num")))
  authors = A.first_by_key(pa.table({
      "author_id": aid, "category": A.lookup(la, lc, aid, 0).astype(np.int32),
      "fans_bucket": fans, "is_live_author": np.ones(fans.size, bool),
      "is_video_author": np.zeros(fans.size, bool)}, schema=S.AUTHOR_SCHEMA), "author_id",
      stats, "streamer.csv")
  more = np.r_[la, events.column("author_id").to_numpy()]
  authors = A.add_missing(authors, "author_id", more, {
      "category": A.lookup(la, lc, more, 0), "fans_bucket": 0, "is_live_author": True,
      "is_video_author": False})
  videos = S.VIDEO_SCHEMA.empty_table()
  return {"users.parquet": users, "authors.parquet": authors, "lives.parquet": lives,
          "videos.parquet": videos}
