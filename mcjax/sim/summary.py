"""Statistics of a simulated log folder, and a printable report.

``summarize(log_dir)`` reads the events, side tables and oracle and returns a JSON-ready
dict: event counts per (domain, event), exposure counts and the short-video:live ratio, the
share of live-sparse users (a user with fewer than ``SPARSE_LIVE_EXPOSURES`` live exposures
in the log, counting every user of the users table), click rate inside vs outside
highlights, oracle AUCs against realized clicks, live traffic per minute, median concurrent
viewers per live on air, and the observability check (see ``observability``).
``format_summary`` renders it as text tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tabulate import tabulate

from mcjax.eventlog import io as eio
from mcjax.eventlog import schema as S
from mcjax.sim import metrics as M
from mcjax.sim import observability as O

SPARSE_LIVE_EXPOSURES = 5


def _codes(column: pa.ChunkedArray, names: tuple[str, ...], where: str) -> np.ndarray:
  """Codes of a string column; an unknown value (e.g. from an older log) is an error."""
  codes = pc.index_in(column, value_set=pa.array(list(names)))
  if codes.null_count:
    bad = pc.unique(pc.filter(column, pc.is_null(codes))).to_pylist()
    raise ValueError(f"{where}: unknown value(s) {bad[:10]}, expected one of {list(names)}; "
                     "a log written by an older version must be generated again")
  return codes.to_numpy().astype(np.int8)


def event_columns(log_dir: str) -> dict:
  """The log's events as numpy columns (ts, ids, value) with domain and event as int8 codes."""
  ev = eio.read_events(log_dir)
  out = {c: ev[c].to_numpy() for c in ("ts_ms", "user_id", "exposure_id", "item_id",
                                        "author_id", "value")}
  where = f"{log_dir}/{S.EVENTS_FILE}"
  out["domain"] = _codes(ev["domain"], S.DOMAINS, f"{where}: column 'domain'")
  out["event"] = _codes(ev["event"], S.EVENTS, f"{where}: column 'event'")
  return out


def mask(e: dict, domain: str, event: str) -> np.ndarray:
  """Rows of ``event_columns``'s arrays with this domain and event."""
  return (e["domain"] == S.DOMAIN_CODE[domain]) & (e["event"] == S.EVENT_CODE[event])


def pick(e: dict, rows: np.ndarray, *cols: str) -> tuple:
  """The named columns of those rows."""
  return tuple(e[c][rows] for c in cols)


def viewers_before(e: dict, live: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Viewers in each ``live``'s room just before ``t``: its clicks before ``t`` minus its
  watch_ends before ``t`` (``event_columns``'s arrays)."""
  c_item, c_ts = pick(e, mask(e, S.LIVE, S.CLICK), "item_id", "ts_ms")
  w_item, w_ts = pick(e, mask(e, S.LIVE, S.WATCH_END), "item_id", "ts_ms")
  return M.count_before(c_item, c_ts, live, t) - M.count_before(w_item, w_ts, live, t)


def _concurrency(e: dict, lives: pa.Table) -> float:
  """Median over (live, minute on air) of the viewers in the room at that minute mark."""
  start, end = lives["start_ms"].to_numpy(), lives["end_ms"].to_numpy()
  first = -(-start // 60_000)
  n = np.maximum((end - 1) // 60_000 - first + 1, 0)
  live = np.repeat(lives["live_id"].to_numpy(), n)
  t = (np.repeat(first, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) * 60_000
  if len(t) == 0:
    return 0.0
  return float(np.median(viewers_before(e, live, t + 1)))  # at the minute mark


def summarize(log_dir: str) -> dict:
  """Statistics and the observability check of a simulated log folder (see module doc)."""
  e = event_columns(log_dir)
  users = eio.read_side(log_dir, "users.parquet")
  authors = eio.read_side(log_dir, "authors.parquet")
  lives = eio.read_side(log_dir, "lives.parquet")
  oracle = eio.read_oracle(log_dir, "exposures.parquet")
  if oracle is None:
    raise ValueError(f"{log_dir} has no oracle; summarize needs a simulated world")

  pairs = e["domain"].astype(np.int64) * len(S.EVENTS) + e["event"]
  cnt = np.bincount(pairs, minlength=len(S.DOMAINS) * len(S.EVENTS))
  counts = {f"{d}/{ev}": int(cnt[S.DOMAIN_CODE[d] * len(S.EVENTS) + S.EVENT_CODE[ev]])
            for d in S.DOMAINS for ev in S.EVENTS if ev in S.DOMAIN_EVENTS[d]}

  is_live_ex = mask(e, S.LIVE, S.EXPOSURE)
  ex_id, ex_ts, ex_user, ex_item, ex_author = pick(e, is_live_ex, "exposure_id", "ts_ms",
                                                    "user_id", "item_id", "author_id")
  n_live, n_sv = len(ex_id), counts[f"{S.SHORT_VIDEO}/{S.EXPOSURE}"]
  clicked = np.isin(ex_id, e["exposure_id"][mask(e, S.LIVE, S.CLICK)])
  o_id = oracle["exposure_id"].to_numpy()
  pos = np.searchsorted(o_id, ex_id)
  if len(o_id) == 0 or not np.array_equal(o_id[np.minimum(pos, len(o_id) - 1)], ex_id):
    raise ValueError(f"{log_dir}: oracle exposures do not match the live exposures")
  p = {k: oracle[k].to_numpy().astype(np.float64)[pos]
       for k in ("p_click", "p_click_no_highlight", "p_click_no_affinity")}
  in_hl = oracle["in_highlight"].to_numpy()[pos]

  user_ids = users["user_id"].to_numpy()
  per_user = np.bincount(np.searchsorted(user_ids, ex_user), minlength=len(user_ids))
  span_min = max((e["ts_ms"].max() - e["ts_ms"].min()) / 60_000.0, 1.0)
  minute = (ex_ts - ex_ts.min()) // 60_000

  crowd = {"exposure": (ex_item, ex_ts)}
  for name, ev in (("click", S.CLICK), ("like", S.LIKE), ("comment", S.COMMENT)):
    crowd[name] = pick(e, mask(e, S.LIVE, ev), "item_id", "ts_ms")
  a_ids = authors["author_id"].to_numpy()
  a_order = np.argsort(a_ids)
  author_topic = (a_ids[a_order], authors["category"].to_numpy()[a_order])
  plays = pick(e, mask(e, S.SHORT_VIDEO, S.WATCH_END), "user_id", "author_id", "ts_ms")
  likes = pick(e, mask(e, S.SHORT_VIDEO, S.LIKE), "user_id", "author_id", "ts_ms")
  train = ex_id % 2 == 0
  hl = O.recovery_share(O.highlight_features(ex_item, ex_ts, crowd), clicked,
                        p["p_click_no_highlight"], p["p_click"], train)
  aff = O.recovery_share(
      O.affinity_features(ex_user, ex_author, ex_ts, author_topic, plays, likes),
      clicked, p["p_click_no_affinity"], p["p_click"], train)

  return {
      "event_counts": counts,
      "live_exposures": n_live,
      "short_video_exposures": n_sv,
      "sv_per_live_ratio": n_sv / max(n_live, 1),
      "live_sparse_threshold": SPARSE_LIVE_EXPOSURES,
      "live_sparse_share": float(np.mean(per_user < SPARSE_LIVE_EXPOSURES)),
      "ctr": float(clicked.mean()) if n_live else float("nan"),
      "ctr_in_highlight": float(clicked[in_hl].mean()) if in_hl.any() else float("nan"),
      "ctr_outside_highlight": float(clicked[~in_hl].mean()) if (~in_hl).any() else float("nan"),
      "in_highlight_share": float(in_hl.mean()) if n_live else float("nan"),
      "auc_p_click": M.auc(clicked, p["p_click"]),
      "auc_p_click_no_highlight": M.auc(clicked, p["p_click_no_highlight"]),
      "auc_p_click_no_affinity": M.auc(clicked, p["p_click_no_affinity"]),
      "live_exposures_per_minute": n_live / span_min,
      "live_exposures_peak_minute": int(np.bincount(minute).max()) if n_live else 0,
      "lives": lives.num_rows,
      "median_concurrent_viewers": _concurrency(e, lives),
      "observability": {"highlight": hl, "affinity": aff},
  }


def format_summary(s: dict) -> str:
  """Renders ``summarize``'s dict as text tables."""
  counts = tabulate([k.split("/") + [v] for k, v in s["event_counts"].items()],
                    headers=["domain", "event", "count"], intfmt=",")
  f = lambda x: f"{x:.4f}"  # noqa: E731
  rows = [
      ["live exposures", f"{s['live_exposures']:,}"],
      ["short-video exposures", f"{s['short_video_exposures']:,}"],
      ["short-video : live", f"{s['sv_per_live_ratio']:.2f}"],
      [f"live-sparse users (< {s['live_sparse_threshold']} live exposures)",
       f"{s['live_sparse_share']:.1%}"],
      ["live CTR", f(s["ctr"])],
      ["CTR inside / outside highlights", f"{f(s['ctr_in_highlight'])} / "
                                          f"{f(s['ctr_outside_highlight'])}"],
      ["exposures inside highlights", f"{s['in_highlight_share']:.1%}"],
      ["AUC p_click", f(s["auc_p_click"])],
      ["AUC p_click_no_highlight", f(s["auc_p_click_no_highlight"])],
      ["AUC p_click_no_affinity", f(s["auc_p_click_no_affinity"])],
      ["live exposures / minute (mean, peak)", f"{s['live_exposures_per_minute']:.1f}, "
                                               f"{s['live_exposures_peak_minute']}"],
      ["lives", s["lives"]],
      ["median concurrent viewers per live on air", f"{s['median_concurrent_viewers']:.1f}"],
  ]
  obs = [[name, f(r["auc_offset"]), f(r["auc_model"]), f(r["auc_oracle"]), f"{r['share']:.2f}"]
         for name, r in s["observability"].items()]
  return "\n\n".join([
      counts, tabulate(rows, headers=["world", "value"]),
      "observability (fit on even exposure_id, scored on odd; share >= 0.5 wanted)\n"
      + tabulate(obs, headers=["recovery", "AUC offset", "AUC model", "AUC oracle", "share"])])
