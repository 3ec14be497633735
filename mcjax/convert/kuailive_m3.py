"""KuaiLive-M3 (live + short-video domains) -> event log.

Mapping (see the public dataset notes):

* live_interaction row: live exposure + click at live_play_start_timestamp, watch_end at
  live_play_end_timestamp (start + play_duration when missing) with play_duration in
  seconds; live_like / live_comment rows (note ``live_stream_id`` in live_comment) are placed
  at their own timestamps inside the watch of the same (user, live); likes/comments counted
  by like_cnt / comment_cnt but without a matching timestamp go at the end of the watch;
  send_gift_cnt gifts (each worth send_gift_num / send_gift_cnt, at least 1) and one follow
  (follow_author_cnt > 0) at the end of the watch; like/comment rows matching no watch are
  dropped and counted;
* live_show row: live exposure without click;
* ids and times are read by ``sources`` (``tz``: the zone of local times); rows with a null id
  or time are dropped and counted per column (a null end is filled as described);
* photo_play row: short_video exposure at enter_timestamp, watch_end at leave_timestamp with
  the play time (leave - enter, ms) in seconds, a like (at leave_timestamp) when
  like_status_type says liked, a follow when followed after but not before the play.

Side tables: users from user_id_set (no profile: codes 0), authors from author_profile (fans
bucket, flags; category = the most frequent first-level tag of their videos), lives from
live_room_meta (category = the author's), videos from photo_meta + photo_tag.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mcjax.convert import assemble as A
from mcjax.convert import sources as src_
from mcjax.eventlog import schema as S

COLUMNS = {
    "user_id_set.csv": ["user_id"],
    "author_profile.csv": ["author_id", "is_photo_author", "is_live_author", "fans_user_num"],
    "live_interaction.csv": [
        "user_id", "author_id", "live_id", "live_play_start_timestamp",
        "live_play_end_timestamp", "play_duration", "like_cnt", "comment_cnt", "send_gift_cnt",
        "send_gift_num", "follow_author_cnt"],
    "live_show.parquet": ["live_id", "user_id", "author_id", "show_timestamp"],
    "live_comment.csv": ["live_stream_id", "user_id", "comment_ts"],
    "live_like.csv": ["user_id", "live_id", "like_timestamp"],
    "live_room_meta.parquet": ["live_id", "author_id", "start_timestamp", "end_timestamp"],
    "photo_play.parquet": [
        "user_id", "photo_id", "author_id", "enter_timestamp", "leave_timestamp",
        "like_status_type", "is_follow_before_play", "is_follow_after_play"],
    "photo_meta.parquet": ["photo_id", "author_id", "duration"],
    "photo_tag.csv": ["photo_id", "first_level_category_name", "second_level_category_name"],
}


def _read(src, name, stats, id_cols, time_cols, optional_times=(), *, tz):
  """Reads a file; returns (table, {column: int64 array}) without rows whose ids/times are
  null (counted per column; ``optional_times`` may be null: MISSING)."""
  return A.read_keyed(src, name, COLUMNS[name], stats, ids=id_cols, times=time_cols,
                      optional_times=optional_times, tz=tz)


def _liked(col) -> np.ndarray:
  """like_status_type -> liked: the number 1, or a string "1" / "like" / "liked"."""
  col = src_.plain(col)
  if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    return src_.numbers(col) == 1
  low = pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string())))
  return pc.fill_null(pc.is_in(low, value_set=pa.array(["1", "like", "liked"])),
                      False).to_numpy(zero_copy_only=False)


def _placed(b, spans, u, l, start, end, name, qu, ql, qts, counts, event, stats) -> None:
  """Timed rows inside a watch, then the uncounted rest (counts - timed) at the watch end."""
  span = A.attach_to_spans(u, l, start, end, qu, ql, qts)
  hit = stats.drop(f"{name}: no open watch of the same (user, live)", span < 0)
  b.add_events(spans[span[hit]], qts[hit], event, 0.0)
  timed = np.bincount(span[hit], minlength=u.size)
  rest = np.maximum(np.nan_to_num(counts).astype(np.int64) - timed, 0)
  at = np.repeat(np.arange(u.size), rest)
  b.add_events(spans[at], end[at], event, 0.0)
  stats.notes[f"{event} counted without a timestamp (at watch end)"] = int(rest.sum())


def _live(src, b, stats, tz) -> None:
  t, c = _read(src, "live_interaction.csv", stats, ["user_id", "author_id", "live_id"],
               ["live_play_start_timestamp"], ["live_play_end_timestamp"], tz=tz)
  start = c["live_play_start_timestamp"]
  end = c["live_play_end_timestamp"]
  dur = src_.numbers(t.column("play_duration"), fill=np.nan)
  end = np.where(end >= start, end, start + np.round(np.nan_to_num(dur, nan=-1)).astype(np.int64))
  dur = np.where(dur >= 0, dur, end - start)
  keep = stats.drop("live_interaction.csv: no valid end or play_duration", ~(end >= start))
  u, a, l, start, end, dur = (v[keep] for v in (c["user_id"], c["author_id"], c["live_id"],
                                                 start, end, dur))
  t = t.filter(pa.array(keep))
  spans = b.add_exposures(start, u, S.LIVE, l, a)
  b.add_events(spans, start, S.CLICK, 0.0)
  b.add_events(spans, end, S.WATCH_END, dur / 1000.0)
  _, k = _read(src, "live_like.csv", stats, ["user_id", "live_id"], ["like_timestamp"],
               tz=tz)
  _placed(b, spans, u, l, start, end, "live_like.csv", k["user_id"], k["live_id"],
          k["like_timestamp"], src_.numbers(t.column("like_cnt")), S.LIKE, stats)
  _, k = _read(src, "live_comment.csv", stats, ["user_id", "live_stream_id"], ["comment_ts"],
               tz=tz)
  _placed(b, spans, u, l, start, end, "live_comment.csv", k["user_id"], k["live_stream_id"],
          k["comment_ts"], src_.numbers(t.column("comment_cnt")), S.COMMENT, stats)
  cnt = np.maximum(src_.numbers(t.column("send_gift_cnt")), 0).astype(np.int64)
  num = src_.numbers(t.column("send_gift_num"))
  each = np.maximum(num / np.maximum(cnt, 1), 1.0)
  at = np.repeat(np.arange(u.size), cnt)
  b.add_events(spans[at], end[at], S.GIFT, each[at])
  fol = src_.numbers(t.column("follow_author_cnt")) > 0
  b.add_events(spans[fol], end[fol], S.FOLLOW, 0.0)
  _, s = _read(src, "live_show.parquet", stats, ["live_id", "user_id", "author_id"],
               ["show_timestamp"], tz=tz)
  b.add_exposures(s["show_timestamp"], s["user_id"], S.LIVE, s["live_id"], s["author_id"])


def _videos(src, stats) -> pa.Table:
  m, c = _read(src, "photo_meta.parquet", stats, ["photo_id", "author_id"], [], tz=None)
  tag, tc = _read(src, "photo_tag.csv", stats, ["photo_id"], [], tz=None)
  cat1 = src_.name_hash(tag.column("first_level_category_name"))
  cat2 = src_.name_hash(tag.column("second_level_category_name"))
  pid = c["photo_id"]
  dur = np.maximum(src_.numbers(m.column("duration")), 0) / 1000.0
  return A.first_by_key(pa.table({
      "video_id": pid, "author_id": c["author_id"],
      "category": A.lookup(tc["photo_id"], cat1, pid, 0).astype(np.int32),
      "tag": A.lookup(tc["photo_id"], cat2, pid, 0).astype(np.int32), "duration_s": dur},
      schema=S.VIDEO_SCHEMA), "video_id", stats, "photo_meta.parquet")


def _plays(src, b, stats, tz) -> None:
  t, c = _read(src, "photo_play.parquet", stats, ["user_id", "photo_id", "author_id"],
               ["enter_timestamp", "leave_timestamp"], tz=tz)
  enter, leave = c["enter_timestamp"], c["leave_timestamp"]
  keep = stats.drop("photo_play.parquet: leave_timestamp before enter_timestamp", leave < enter)
  t = t.filter(pa.array(keep))
  u, p, a, enter, leave = (v[keep] for v in (c["user_id"], c["photo_id"], c["author_id"],
                                              enter, leave))
  plays = b.add_exposures(enter, u, S.SHORT_VIDEO, p, a)
  b.add_events(plays, leave, S.WATCH_END, (leave - enter) / 1000.0)
  liked = _liked(t.column("like_status_type"))
  b.add_events(plays[liked], leave[liked], S.LIKE, 0.0)
  fol = (src_.flags(t.column("is_follow_after_play"))
         & ~src_.flags(t.column("is_follow_before_play")))
  b.add_events(plays[fol], leave[fol], S.FOLLOW, 0.0)


def convert(src: str, tz: str | None = None
            ) -> tuple[pa.Table, dict[str, pa.Table], A.ConvertStats]:
  """Reads a KuaiLive-M3 folder; returns (events, side tables, stats), not yet validated.

  ``tz``: the zone of local (zone-less) times in the files; None refuses them.
  """
  stats = A.ConvertStats()
  b = A.LogBuilder()
  _live(src, b, stats, tz)
  videos = _videos(src, stats)
  _plays(src, b, stats, tz)
  events = b.build()
  return events, _side(src, events, videos, stats, tz), stats


def _side(src, events, videos, stats, tz) -> dict[str, pa.Table]:
  ev = {c: events.column(c).to_numpy(zero_copy_only=False)
        for c in ("user_id", "item_id", "author_id", "domain")}
  sv = ev["domain"] == S.SHORT_VIDEO
  videos = A.add_missing(videos, "video_id", ev["item_id"][sv], {
      "author_id": ev["author_id"][sv], "category": 0, "tag": 0, "duration_s": 0.0})
  va, vc = videos.column("author_id").to_numpy(), videos.column("category").to_numpy()
  ka, kc = A.mode_by_key(va[vc != 0], vc[vc != 0])

  r, c = _read(src, "live_room_meta.parquet", stats, ["live_id", "author_id"],
               ["start_timestamp"], ["end_timestamp"], tz=tz)
  end = c["end_timestamp"]
  lives = A.complete_lives(pa.table({
      "live_id": c["live_id"], "author_id": c["author_id"],
      "category": A.lookup(ka, kc, c["author_id"], 0).astype(np.int32),
      "start_ms": c["start_timestamp"], "end_ms": pa.array(end, mask=end < 0)}), events, stats)

  _, uc = _read(src, "user_id_set.csv", stats, ["user_id"], [], tz=None)
  uid = np.unique(np.r_[uc["user_id"], ev["user_id"]])
  zeros = np.zeros(uid.size, np.int32)
  users = pa.table({"user_id": uid, "age_bucket": zeros, "gender": zeros,
                    "activity_bucket": zeros}, schema=S.USER_SCHEMA)

  p, pc_ = _read(src, "author_profile.csv", stats, ["author_id"], [], tz=None)
  live_auth = np.r_[lives.column("author_id").to_numpy(), ev["author_id"][~sv]]
  aid = pc_["author_id"]
  authors = A.first_by_key(pa.table({
      "author_id": aid, "category": A.lookup(ka, kc, aid, 0).astype(np.int32),
      "fans_bucket": src_.log2_bucket(src_.numbers(p.column("fans_user_num"))),
      "is_live_author": src_.flags(p.column("is_live_author")) | np.isin(aid, live_auth),
      "is_video_author": src_.flags(p.column("is_photo_author")) | np.isin(aid, va)},
      schema=S.AUTHOR_SCHEMA), "author_id", stats, "author_profile.csv")
  more = np.r_[live_auth, va]
  authors = A.add_missing(authors, "author_id", more, {
      "category": A.lookup(ka, kc, more, 0), "fans_bucket": 0,
      "is_live_author": np.isin(more, live_auth), "is_video_author": np.isin(more, va)})
  return {"users.parquet": users, "authors.parquet": authors, "lives.parquet": lives,
          "videos.parquet": videos}
