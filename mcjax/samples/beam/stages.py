"""The Beam engine's per-key work: plain numpy functions over the batches of one key.

Each function is one stage of ``pipeline`` (the Beam graph only routes batches between them)
and calls the in-process engine's own functions on its key's rows: ``events.organize``,
``windows.label_times`` / ``emit_samples`` / ``eval_rows``, ``crowd.CrowdIndex`` (with a
``Carry``), ``crowd.carry_totals`` / ``live_start`` / ``viewer_times``,
``history.ShortVideoHistory`` / ``LiveHistory`` / ``short_video_plays`` / ``live_action_ts``,
``engine.side_fields`` / ``time_fields`` / ``oracle_fields`` / ``assemble``. No rule is written
twice; the functions here only gather a key's rows, call those, and say where each output
goes (``Route``: a key and a batch).

Keys (see ``Layout``): exposure bucket (labels), (live bucket, salt) (lives.parquet join),
(live bucket, time range) (crowd features), live bucket (carry scan), (video bucket, salt)
(videos.parquet join), (author bucket, salt) (authors.parquet join), user range bucket
(histories, users.parquet), then exposure bucket again (the join) and (split, time range)
(the shards).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mcjax.eventlog import schema as S
from mcjax.moment import crowd, engine, events, history, windows
from mcjax.samples.beam import cols as C
from mcjax.samples.beam.layout import Layout
from mcjax.moment.config import MomentConfig
from mcjax.contract import schema as SS

_EC = S.EVENT_CODE
_LIVE = S.DOMAIN_CODE[S.LIVE]
_SV = S.DOMAIN_CODE[S.SHORT_VIDEO]
_COUNTED = np.array(sorted(_EC[e] for e in crowd.COUNTED.values()))
ALWAYS = np.iinfo(np.int64).min


# ---------------------------------------------------------------------------- routes

def routes(tag: str, batch: dict, *keys: np.ndarray):
  """(tag, key, rows) for each key of ``batch`` (``cols.split``)."""
  for key, rows in C.split(batch, *keys):
    yield tag, key, rows


def _crowd_routes(tag: str, batch: dict, layout: Layout, live_bucket):
  """Events / viewer changes of lives -> the crowd ranges that hold them: their own range,
  and the range before when they lie in its last 5 min (a query there looks back that far)."""
  j = layout.own_range(batch["ts"])
  yield from routes(tag, batch, live_bucket(batch["live"]), j)
  early = batch["ts"] < j * layout.crowd_range_ms
  if early.any():
    sub = C.take(batch, early)
    yield from routes(tag, sub, live_bucket(sub["live"]), j[early] - 1)


# ---------------------------------------------------------------------------- read

def route_events(batch: dict, layout: Layout):
  """A batch read from the log -> live exposure events to the lives.parquet join, every other
  row to its exposure bucket."""
  to_join = (batch["code"] == _EC[S.EXPOSURE]) & (batch["domain"] == _LIVE)
  if to_join.any():
    sub = C.take(batch, to_join)
    yield from routes("live_exposures", sub, C.bucket(sub["item"], layout.buckets),
                      C.bucket(sub["xid"], layout.salts, salt=1))
  rest = C.take(batch, ~to_join)
  yield from routes("events", rest, C.bucket(rest["xid"], layout.buckets))


def table_routes(tag: str, table: pa.Table, key: str, layout: Layout, salted: bool,
                 bounds=None):
  """Rows of a side table -> their buckets (every salt of it when ``salted``; user range
  buckets when ``bounds`` is given)."""
  ids = table[key].to_numpy()
  b = C.range_bucket(ids, bounds) if bounds is not None else C.bucket(ids, layout.buckets)
  for value in np.unique(b):
    part = table.filter(pa.array(b == value))
    for s in range(layout.salts if salted else 1):
      yield tag, (int(value), s) if salted else (int(value),), part


def _lookup(tables: list, name: str, key: str) -> events.Lookup:
  schema = events._TABLES[name][1]
  table = pa.concat_tables(tables) if tables else schema.empty_table()
  return events.Lookup.build(table, name, key)


# ---------------------------------------------------------------------------- lives join

def join_lives(exposures: list, lives: list, layout: Layout):
  """Live exposure events + their lives.parquet rows -> the events with live_known,
  live_start (start_ms) and live_category, to their exposure buckets."""
  batch = C.concat(exposures)
  if not C.length(batch):
    return
  yield "stats", None, {"max/lives join: exposure events": C.length(batch)}
  table = _lookup(lives, "lives", "live_id")
  rows = table.rows(batch["item"])
  batch["live_known"] = rows >= 0
  batch["live_start"] = events.gather(table.columns["start_ms"], rows, 0)
  batch["live_category"] = engine.side_fields("lives", table, batch["item"])["live_category"]
  yield from routes("live_exposures", batch, C.bucket(batch["xid"], layout.buckets))


# ---------------------------------------------------------------------------- exposures

def _with_live_info(batch: dict) -> dict:
  n = C.length(batch)
  return batch | {"live_known": np.zeros(n, bool), "live_start": np.zeros(n, np.int64),
                  "live_category": np.full(n, -1, np.int32)}


def exposures(rows: list, live_rows: list, cfg: MomentConfig, layout: Layout, user_bounds):
  """Stage E, one exposure bucket: the events of its exposures -> labels and sample rows, and
  what every feature needs, routed onwards (see the module docstring). Yields (tag, key,
  batch) and finally ("stats", None, dict)."""
  batch = C.concat([_with_live_info(r) for r in rows] + list(live_rows))
  if not C.length(batch):
    return
  org = events.organize(batch["ts"], batch["xid"], batch["code"], batch["domain"],
                        batch["value"], batch["user"], batch["item"], batch["author"],
                        seq=batch["seq"])
  ex = org.exposures
  live, local, on_live = engine.live_exposures(ex, org.xi)
  n = len(live)
  head = org.first_row[live]  # each live exposure's exposure event (with its live's row)
  known, category = batch["live_known"][head], batch["live_category"][head]
  table_start = batch["live_start"][head]
  xid, ets = ex.exposure_id[live], ex.ts[live]
  user, live_id, author = ex.user[live], ex.item[live], ex.author[live]
  first = ex.first[live]
  group = local[org.xi[on_live]]
  ts, code, value = org.ts[on_live], org.code[on_live], org.value[on_live]

  labels = windows.label_times(group, ts, code, ets, cfg)
  train, mode_stats = windows.emit_samples(labels, cfg)
  evals = windows.eval_rows(labels)
  kinds = np.bincount(train["kind"], minlength=len(SS.KIND_NAMES))
  stats = dict(org.stats, **labels.stats, **mode_stats, live_exposures=n,
               **{"max/exposure bucket: events": C.length(batch)},
               train_samples=int(len(train["x"])), eval_records=n,
               unknown_lives=int((~known).sum()),
               **{f"samples/{SS.KIND_NAMES[k]}": int(kinds[k])
                  for k in SS.KIND_NAMES if k != SS.EVAL})

  # Sample rows, with their query times; the join adds the features.
  queries = []
  for split, r in (("train", train), ("eval", evals)):
    x = r["x"]
    q = engine.query_times(r, ets, cfg, is_eval=split == "eval")
    out = {"xid": xid[x], "q": q, "exposure_ts_ms": ets[x], "sample_ts_ms": r["sample_ts_ms"],
           "kind": r["kind"], "labels": r["labels"], "label_mask": r["label_mask"],
           "user_id": user[x], "live_id": live_id[x], "author_id": author[x],
           "live_category": category[x]}
    if len(x):
      yield f"rows_{split}", None, out
    queries.append(np.stack([x, q], axis=1))
  pairs = np.unique(np.concatenate(queries), axis=0) if n else np.zeros((0, 2), np.int64)
  qx, qq = pairs[:, 0], pairs[:, 1]

  def live_bucket(ids):
    return C.bucket(ids, layout.buckets)

  # Crowd: the queries, the counted events and viewer changes, and the carry totals.
  query = {"xid": xid[qx], "q": qq, "live": live_id[qx]}
  yield from routes("crowd_queries", query, live_bucket(query["live"]),
                    layout.query_range(qq))
  counted = np.isin(code, _COUNTED)
  ev_live = live_id[group]
  yield from _crowd_routes("crowd_events", {"live": ev_live[counted], "ts": ts[counted],
                                            "code": code[counted], "value": value[counted]},
                           layout, live_bucket)
  viewers = crowd.viewer_times(live_id, first[:, _EC[S.CLICK]], first[:, _EC[S.WATCH_END]])
  changes = {"live": np.concatenate([viewers["enter_live"], viewers["leave_live"]]),
             "ts": np.concatenate([viewers["enter_ts"], viewers["leave_ts"]]),
             "leave": np.repeat([False, True], [len(viewers["enter_ts"]),
                                               len(viewers["leave_ts"])])}
  yield from _crowd_routes("crowd_viewers", changes, layout, live_bucket)
  since = np.where(known, table_start, ALWAYS)  # unknown lives start at their first exposure
  lv, rg, totals = crowd.carry_totals(ev_live, ts, code, value, since[group], viewers,
                                      layout.own_range)
  yield from routes("carry_totals", {"live": lv, "range": rg, "totals": totals},
                    live_bucket(lv))
  ids, at = np.unique(live_id, return_index=True)
  earliest = np.full(len(ids), events.NEVER, np.int64)
  np.minimum.at(earliest, np.searchsorted(ids, live_id), ets)
  yield from routes("live_starts", {"live": ids, "first_ts": earliest, "known": known[at],
                                    "table_start": table_start[at]}, live_bucket(ids))
  marks = np.unique(np.stack([query["live"], layout.query_range(qq)], axis=1), axis=0) \
      if len(qq) else np.zeros((0, 2), np.int64)
  yield from routes("crowd_marks", {"live": marks[:, 0], "range": marks[:, 1]},
                    live_bucket(marks[:, 0]))

  # Histories: the live exposures as live-history records, the queries, the plays.
  def user_bucket(ids):
    return C.range_bucket(ids, user_bounds)

  record = {"xid": xid, "user": user, "ts": ets, "live": live_id, "author": author,
            "category": category, "watch_ts": first[:, _EC[S.WATCH_END]],
            "watch_value": ex.watch_value[live]}
  record |= {f"action_{k}": v for k, v in history.live_action_ts(first).items()}
  yield from routes("lv_records", record, user_bucket(user))
  hq = {"xid": xid[qx], "q": qq, "user": user[qx]}
  yield from routes("user_queries", hq, user_bucket(hq["user"]))
  play = np.flatnonzero((org.code == _EC[S.WATCH_END]) & (ex.domain[org.xi] == _SV))
  px = org.xi[play]
  plays = {"user": ex.user[px], "ts": org.ts[play], "item": ex.item[px],
           "author": ex.author[px], "value": org.value[play],
           "like_ts": ex.first[px, _EC[S.LIKE]], "follow_ts": ex.first[px, _EC[S.FOLLOW]],
           "xid": ex.exposure_id[px], "seq": batch["seq"][org.row[play]]}
  yield from routes("plays", plays, C.bucket(plays["item"], layout.buckets),
                    C.bucket(plays["xid"], layout.salts, salt=1))
  # Author side features.
  req = {"xid": xid, "author": author}
  yield from routes("author_requests", req, C.bucket(author, layout.buckets),
                    C.bucket(xid, layout.salts, salt=1))
  yield "stats", None, stats


# ---------------------------------------------------------------------------- crowd

def carry_scan(totals: list, starts: list, marks: list, layout: Layout):
  """One live bucket: per (live, crowd range) totals -> each queried range's carry (the sum
  over the live's earlier ranges) and the live's start, to that crowd range."""
  m = C.concat(marks)
  if not C.length(m):
    return
  s = C.concat(starts)
  start_all = crowd.live_start(s["live"], s["first_ts"], s["known"], s["table_start"])
  live_ids, at = np.unique(s["live"], return_index=True)
  start = start_all[at]
  t = C.concat(totals, like={"live": np.zeros(0, np.int64), "range": np.zeros(0, np.int64),
                             "totals": np.zeros((0, len(crowd.CARRY_COLUMNS)), np.int64)})
  pairs = np.unique(np.stack([m["live"], m["range"]], axis=1), axis=0)
  mlive, mrange = pairs[:, 0], pairs[:, 1]
  lives = np.unique(np.concatenate([t["live"], mlive]))
  lo_r = min(t["range"].min(initial=mrange.min()), mrange.min())
  width = max(t["range"].max(initial=mrange.max()), mrange.max()) - lo_r + 1
  key = np.searchsorted(lives, t["live"]) * width + (t["range"] - lo_r)
  order = np.argsort(key, kind="stable")
  key, tot = key[order], t["totals"][order]
  cum = np.concatenate([np.zeros((1, tot.shape[1]), np.int64), np.cumsum(tot, axis=0)])
  rank = np.searchsorted(lives, mlive) * width
  begin = np.searchsorted(key, rank, "left")              # the live's first range
  end = np.searchsorted(key, rank + (mrange - lo_r), "left")  # its ranges before this one
  carry = cum[end] - cum[begin]
  out = {"live": mlive, "totals": carry,
         "start": start[np.searchsorted(live_ids, mlive)]}
  yield from routes("crowd_carry", out, C.bucket(mlive, layout.buckets), mrange)


def crowd_range(evs: list, viewers: list, queries: list, carries: list, layout: Layout):
  """One (live bucket, time range): the crowd features of its queries, to their exposures."""
  q = C.concat(queries)
  if not C.length(q):
    return
  e = C.concat(evs, like={"live": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64),
                          "code": np.zeros(0, np.int8), "value": np.zeros(0)})
  v = C.concat(viewers, like={"live": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64),
                              "leave": np.zeros(0, bool)})
  c = C.concat(carries)
  order = np.argsort(c["live"])
  carry = crowd.Carry(live=c["live"][order], totals=c["totals"][order])
  index = crowd.CrowdIndex(e["live"], e["ts"], e["code"], e["value"],
                           enter_live=v["live"][~v["leave"]], enter_ts=v["ts"][~v["leave"]],
                           leave_live=v["live"][v["leave"]], leave_ts=v["ts"][v["leave"]],
                           carry=carry)
  start = c["start"][order][np.searchsorted(carry.live, q["live"])]
  yield "stats", None, {"max/crowd range: events": C.length(e) + C.length(v),
                        "max/crowd range: queries": C.length(q)}
  feats = index.features(q["live"], q["q"], start)
  out = {"xid": q["xid"], "q": q["q"], "crowd": feats}
  yield from routes("crowd", out, C.bucket(out["xid"], layout.buckets))


# ---------------------------------------------------------------------------- side tables

def join_videos(plays: list, videos: list, user_bounds):
  """Plays + their videos.parquet rows -> ``history.short_video_plays``, to the user buckets."""
  p = C.concat(plays)
  if not C.length(p):
    return
  kwargs, stats = history.short_video_plays(
      p["user"], p["ts"], p["item"], p["author"], p["value"], p["like_ts"], p["follow_ts"],
      _lookup(videos, "videos", "video_id"))
  out = kwargs | {"xid": p["xid"], "seq": p["seq"]}
  stats = dict(stats, **{"max/videos join: plays": C.length(p)})
  yield from routes("plays", out, C.range_bucket(out["user"], user_bounds))
  yield "stats", None, stats


def join_authors(requests: list, authors: list, layout: Layout):
  """Live exposures' authors + authors.parquet rows -> author_fans_bucket, to the exposures."""
  r = C.concat(requests)
  if not C.length(r):
    return
  table = _lookup(authors, "authors", "author_id")
  out = {"xid": r["xid"], **engine.side_fields("authors", table, r["author"])}
  yield from routes("authors", out, C.bucket(r["xid"], layout.buckets))
  yield "stats", None, {"unknown_authors": int((table.rows(r["author"]) < 0).sum())}


# ---------------------------------------------------------------------------- histories

_PLAY_ARGS = ("user", "ts", "item", "author", "category", "tag", "progress", "like_ts",
              "follow_ts")


def histories(bucket: int, plays: list, records: list, queries: list, users: list,
              cfg: MomentConfig, layout: Layout):
  """One user range bucket: its users' history stores and the references of its queries.

  Yields ("stores", None, {"sv": HistoryStore, "lv": HistoryStore}) and the queries' refs
  (positions inside this bucket's stores; an end of -1 for a user without records) with the
  users.parquet side features, to the exposures.
  """
  p, r, q = C.concat(plays), C.concat(records), C.concat(queries)
  if C.length(p):
    p = C.take(p, np.lexsort((p["seq"], p["xid"], p["ts"])))  # the log's order
    sv = history.ShortVideoHistory(**{k: p[k] for k in _PLAY_ARGS})
  else:
    sv = history.ShortVideoHistory(*(np.zeros(0, np.int64) for _ in _PLAY_ARGS))
  if C.length(r):
    r = C.take(r, np.argsort(r["xid"], kind="stable"))  # the in-process record order
    lv = history.LiveHistory(r["user"], r["ts"], r["live"], r["author"], r["category"],
                             r["watch_ts"], r["watch_value"],
                             {k: r[f"action_{k}"] for k in SS.LIVE_ACTION_BITS})
  else:
    empty = np.zeros(0, np.int64)
    lv = history.LiveHistory(*(empty,) * 7, {k: empty for k in SS.LIVE_ACTION_BITS})
  table = _lookup(users, "users", "user_id")
  stats = {"unknown_users": int((table.rows(r["user"]) < 0).sum()) if C.length(r) else 0,
           "max/user bucket: history records": C.length(p) + C.length(r),
           "max/user bucket: queries": C.length(q)}
  yield "stats", None, stats
  yield "stores", None, {"sv": sv.store, "lv": lv.store}
  if not C.length(q):
    return
  exclude = np.searchsorted(r["xid"], q["xid"])  # each query's own live exposure
  out = {"xid": q["xid"], "q": q["q"], "bucket": np.full(C.length(q), bucket, np.int64),
         **engine.side_fields("users", table, q["user"])}
  for hist, refs in ((sv, sv.refs(q["user"], q["q"], cfg.sv_hist_len)),
                     (lv, lv.refs(q["user"], q["q"], cfg.lv_hist_len, exclude=exclude))):
    p_ = hist.prefix
    has = np.isin(q["user"], hist.index.segments)
    refs[f"{p_}_hist_end"] = np.where(has, refs[f"{p_}_hist_end"], -1)
    out |= refs
  yield from routes("histories", out, C.bucket(out["xid"], layout.buckets))


# ---------------------------------------------------------------------------- the join

def join(rows: dict, crowds: list, hists: list, authors: list, oracle: list,
         offsets: dict, layout: Layout):
  """One exposure bucket: its sample rows and their features -> stored sample tables, to the
  write ranges of their sample times. ``offsets``: {"sv"/"lv": (user buckets,) int64} the
  position of each user bucket's store in the split's history store."""
  c, h, a = C.concat(crowds), C.concat(hists), C.concat(authors)
  oracle_lookup = _lookup(oracle, "oracle_exposures", "exposure_id") if oracle else None
  for split, parts in rows.items():
    r = C.concat(parts)
    if not C.length(r):
      continue
    ci = C.pair_index(r["xid"], r["q"], c["xid"], c["q"])
    hi = C.pair_index(r["xid"], r["q"], h["xid"], h["q"])
    by_xid = np.argsort(a["xid"])
    ai = by_xid[np.minimum(np.searchsorted(a["xid"], r["xid"], sorter=by_xid), len(by_xid) - 1)]
    if (ci < 0).any() or (hi < 0).any() or (a["xid"][ai] != r["xid"]).any():
      raise RuntimeError("Beam engine: a sample row lost some of its features")
    fields = {"user_id": r["user_id"], "live_id": r["live_id"], "author_id": r["author_id"],
              **engine.time_fields(r["q"]), "crowd": c["crowd"][ci],
              "live_category": r["live_category"],
              "author_fans_bucket": a["author_fans_bucket"][ai],
              **{k: h[k][hi] for k in ("user_age", "user_gender", "user_activity")},
              "sample_ts_ms": r["sample_ts_ms"], "kind": r["kind"], "labels": r["labels"],
              "label_mask": r["label_mask"], "exposure_id": r["xid"],
              "exposure_ts_ms": r["exposure_ts_ms"],
              **engine.oracle_fields(oracle_lookup, r["xid"], split == "eval")}
    for p in SS.DOMAINS:
      end, skip = h[f"{p}_hist_end"][hi], h[f"{p}_hist_skip"][hi]
      base = offsets[p][h["bucket"][hi]]
      fields[f"{p}_hist_end"] = np.where(end < 0, 0, end + base)
      fields[f"{p}_hist_n"] = h[f"{p}_hist_n"][hi]
      fields[f"{p}_hist_skip"] = np.where(skip < 0, -1, skip + base)
    table = engine.assemble(fields, stored=True)
    yield from routes(split, table, table["sample_ts_ms"] // layout.write_range_ms)


def sort_part(table: dict) -> dict:
  """A write range's rows in the samples' order: (sample_ts_ms, exposure_id, kind)."""
  return C.take(table, np.lexsort((table["kind"], table["exposure_id"], table["sample_ts_ms"])))
