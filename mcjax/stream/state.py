"""The stream engine's state, and the feature context built from it.

What the engine carries between micro-batches (all ``columns.Columns``, so a checkpoint is a
pickle of this object):

* ``x``: exposures (both domains): ids, time, user, item, author, the time of the first event
  of every kind (``first``, as ``events.Exposures``) and the first watch_end value, plus the
  progress of a live exposure through the engine (features taken, samples emitted up to,
  evaluation record made, done). A row stays while its exposure is open, while it is one of
  its user's ``lv_hist_len + 1`` most recent live exposures before the watermark, or while it
  is younger than ``exposure_ttl_s``; an evicted live row's viewer entry and exit go into the
  crowd carry.
* ``events``: the events of open live exposures (their labels are recomputed from them).
* ``crowd``: live-domain events younger than the largest crowd window before the watermark;
  older ones are summed into ``crowd.Carry`` totals per live (the Beam engine's carry).
* ``plays``: short-video plays, per user the ``sv_hist_len + 1`` most recent before the
  watermark and all after it.
* side tables as they arrived, and each live's first exposure time.

``StateContext`` is a ``moment.engine.Context`` over this state: the batch engine's
``request_features`` (side fields, crowd features, history references and snapshots) runs
unchanged on it. Any query at a time q at or after the last prune's watermark gets exactly
the features the batch engine computes from the whole log (events with ts < q).
"""

from __future__ import annotations

import types

import numpy as np
import pyarrow as pa

from mcjax.eventlog import schema as S
from mcjax.moment import crowd as crowd_lib
from mcjax.moment.engine import Context
from mcjax.moment.events import NEVER, Lookup
from mcjax.moment.history import (LiveHistory, ShortVideoHistory, live_action_ts,
                                  short_video_plays)
from mcjax.stream.columns import Columns

EC = S.EVENT_CODE
NE = len(S.EVENTS)
LIVE = S.DOMAIN_CODE[S.LIVE]
SV = S.DOMAIN_CODE[S.SHORT_VIDEO]
BEFORE = np.iinfo(np.int64).min  # "nothing emitted yet"
_I, _B = np.int64, bool

X_SPEC = {"exposure_id": (_I, (), -1), "ts": (_I, (), 0), "user": (_I, (), 0),
          "item": (_I, (), 0), "author": (_I, (), 0), "domain": (np.int8, (), 0),
          "first": (_I, (NE,), NEVER), "watch_value": (np.float64, (), np.nan),
          "featured": (_B, (), False), "feat_row": (_I, (), -1),
          "emitted_until": (_I, (), BEFORE), "next_due": (_I, (), BEFORE),
          "touched": (_B, (), True), "closed": (_B, (), False), "done": (_B, (), False)}
EVENT_SPEC = {"exposure_id": (_I, (), -1), "ts": (_I, (), 0), "code": (np.int8, (), 0)}
CROWD_SPEC = {"live": (_I, (), 0), "ts": (_I, (), 0), "code": (np.int8, (), 0),
              "value": (np.float64, (), 0.0)}
PLAY_SPEC = {"exposure_id": (_I, (), -1), "user": (_I, (), 0), "ts": (_I, (), 0),
             "item": (_I, (), 0), "author": (_I, (), 0), "value": (np.float64, (), 0.0),
             "like_ts": (_I, (), NEVER), "follow_ts": (_I, (), NEVER), "seq": (_I, (), 0)}
PENDING_SPEC = {"seq": (_I, (), 0), **{k: (_I, (), 0) for k in
                                       ("ts", "xid", "user", "item", "author")},
                "code": (np.int8, (), 0), "domain": (np.int8, (), 0),
                "value": (np.float64, (), 0.0)}
SIDE = {"users": ("users.parquet", "user_id"), "authors": ("authors.parquet", "author_id"),
        "lives": ("lives.parquet", "live_id"), "videos": ("videos.parquet", "video_id")}


def _keep_recent(user: np.ndarray, ts: np.ndarray, tie: np.ndarray, before: int,
                 keep: int) -> np.ndarray:
  """Mask: per user the ``keep`` most recent rows with ts < ``before``, and all later ones."""
  n = len(user)
  if n == 0:
    return np.zeros(0, bool)
  order = np.lexsort((tie, ts, user))
  u, old = user[order], ts[order] < before
  start = np.r_[True, u[1:] != u[:-1]]
  group = np.cumsum(start) - 1
  n_old = np.bincount(group, weights=old).astype(np.int64)
  rank = np.arange(n) - np.flatnonzero(start)[group]  # old rows come first in their user
  out = np.zeros(n, bool)
  out[order] = ~old | (rank >= n_old[group] - keep)
  return out


class StreamState:
  """See the module docstring."""

  def __init__(self, side: dict | None = None, *, sv_keep: int, lv_keep: int, ttl_ms: int):
    self.x = Columns(X_SPEC)
    self.events = Columns(EVENT_SPEC)
    self.crowd = Columns(CROWD_SPEC)
    self.plays = Columns(PLAY_SPEC)
    self.pending = Columns(PENDING_SPEC)
    self.carry = crowd_lib.Carry(np.zeros(0, _I), np.zeros((0, len(crowd_lib.CARRY_COLUMNS)), _I))
    self.live_ids = np.zeros(0, _I)     # sorted ids of the lives exposed so far
    self.live_first = np.zeros(0, _I)   # their first exposure time
    self.live_last = np.zeros((0, 3), _I)  # (ts, exposure id, author) of their latest exposure
    self.users = np.zeros(0, _I)        # sorted ids of the users exposed so far
    self.sv_keep, self.lv_keep, self.ttl_ms = sv_keep, lv_keep, ttl_ms
    self.seq = 0
    self.stats = {"events_applied": 0, "orphan_events": 0, "events_before_exposure": 0,
                  "duplicate_exposure_events": 0, "events_of_evicted_exposures": 0}
    self.side_tables = {name: S.SIDE_TABLES[file].empty_table()
                        for name, (file, _) in SIDE.items()}
    self.add_side(side or {})
    self._index = None

  # ------------------------------------------------------------------ side tables

  def add_side(self, tables: dict) -> None:
    """Side-table rows (by table or file name): a row replaces the one with its id."""
    for key, table in tables.items():
      name = next((n for n, (f, _) in SIDE.items() if key in (n, f)), None)
      if name is None:
        raise ValueError(f"unknown side table {key!r}; expected one of "
                         f"{sorted(f for f, _ in SIDE.values())}")
      file, id_col = SIDE[name]
      old = self.side_tables[name]
      new = table.select(old.column_names).cast(old.schema)
      keep = ~np.isin(old[id_col].to_numpy(), new[id_col].to_numpy())
      merged = pa.concat_tables([old.filter(pa.array(keep)), new])
      ids = merged[id_col].to_numpy()
      _, last = np.unique(ids[::-1], return_index=True)  # a later row of an id wins
      self.side_tables[name] = merged.take(pa.array(np.sort(len(ids) - 1 - last)))
    self.lookups = {name: Lookup.build(self.side_tables[name], name, SIDE[name][1])
                    for name in SIDE}

  # ------------------------------------------------------------------ ingestion

  def rows_of(self, xid: np.ndarray) -> np.ndarray:
    """The x row of each exposure id (-1: none)."""
    if self._index is None:
      ids = self.x["exposure_id"]
      order = np.argsort(ids, kind="stable")
      self._index = (ids[order], order)
    ids, order = self._index
    if not len(ids):
      return np.full(len(xid), -1, _I)
    pos = np.minimum(np.searchsorted(ids, xid), len(ids) - 1)
    return np.where(ids[pos] == xid, order[pos], -1)

  def _reindex(self) -> None:
    self._index = None  # rebuilt by the next rows_of

  def ingest(self, c: dict) -> None:
    """Applies checked event rows (``events.event_columns`` arrays), in delivery order."""
    n = len(c["ts"])
    c = dict(c, seq=np.arange(self.seq, self.seq + n))
    self.seq += n
    if len(self.pending):
      c = {k: np.concatenate([self.pending[k], c[k]]) for k in c}
      self.pending.keep(np.zeros(len(self.pending), bool))
    order = np.lexsort((c["seq"], c["xid"], c["ts"]))
    c = {k: v[order] for k, v in c.items()}
    code, xid, ts = c["code"], c["xid"], c["ts"]
    rows = self.rows_of(xid)
    is_exp = code == EC[S.EXPOSURE]
    new = np.flatnonzero(is_exp & (rows < 0))
    _, first = np.unique(xid[new], return_index=True)
    new = np.sort(new[first])
    self.stats["duplicate_exposure_events"] += int(is_exp.sum() - len(new))
    if len(new):
      added = self.x.append(exposure_id=xid[new], ts=ts[new], user=c["user"][new],
                            item=c["item"][new], author=c["author"][new],
                            domain=c["domain"][new])
      self.x["first"][added, EC[S.EXPOSURE]] = ts[new]
      self._reindex()
      live = c["domain"][new] == LIVE
      self._add_lives(c["item"][new][live], ts[new][live], xid[new][live],
                      c["author"][new][live])
      self.users = np.union1d(self.users, c["user"][new])
      rows = self.rows_of(xid)
    other = ~is_exp
    orphan = other & (rows < 0)
    if orphan.any():  # maybe its exposure event (same ts, later in the log) is still to come
      o = np.flatnonzero(orphan)
      self.pending.append(**{k: c[k][o] for k in PENDING_SPEC})
    r = np.where(other & (rows >= 0), rows, 0)
    x_ts = self.x["ts"][r] if len(self.x["ts"]) else np.zeros(len(r), ts.dtype)  # none yet
    before = other & (rows >= 0) & (ts < x_ts)
    self.stats["events_before_exposure"] += int(before.sum())
    ok = np.flatnonzero(other & (rows >= 0) & ~before)
    kept = np.r_[new, ok]
    kept.sort()
    self.stats["events_applied"] += len(kept)
    self._apply(c, kept, self.rows_of(xid[kept]))

  def _apply(self, c: dict, k: np.ndarray, rows: np.ndarray) -> None:
    """Kept events (rows ``k`` of the sorted columns ``c``) of exposures ``rows`` of x."""
    x = self.x
    code, ts = c["code"][k], c["ts"][k]
    first = x["first"]
    old = first[rows, code].copy()
    np.minimum.at(first, (rows, code), ts)
    x["touched"][rows] = True
    # the first watch_end's value: the earliest watch_end event of its exposure
    watch = np.flatnonzero((code == EC[S.WATCH_END]) & (ts < old) & (ts == first[rows, code]))
    if len(watch):
      _, at = np.unique(rows[watch], return_index=True)
      x["watch_value"][rows[watch[at]]] = c["value"][k][watch[at]]
    live = x["domain"][rows] == LIVE
    self.events.append(exposure_id=c["xid"][k][live], ts=ts[live], code=code[live])
    self.crowd.append(live=c["item"][k][live], ts=ts[live], code=code[live],
                      value=c["value"][k][live])
    play = ~live & (code == EC[S.WATCH_END])
    pr = rows[play]
    self.plays.append(exposure_id=c["xid"][k][play], user=x["user"][pr], ts=ts[play],
                      item=x["item"][pr], author=x["author"][pr], value=c["value"][k][play],
                      like_ts=first[pr, EC[S.LIKE]], follow_ts=first[pr, EC[S.FOLLOW]],
                      seq=c["seq"][k][play])
    acts = ~live & np.isin(code, [EC[S.LIKE], EC[S.FOLLOW]])
    if acts.any():  # a play's like / follow bits are its exposure's first like / follow
      changed = np.unique(c["xid"][k][acts])
      hit = np.flatnonzero(np.isin(self.plays["exposure_id"], changed))
      if len(hit):
        xr = self.rows_of(self.plays["exposure_id"][hit])
        self.plays["like_ts"][hit] = first[xr, EC[S.LIKE]]
        self.plays["follow_ts"][hit] = first[xr, EC[S.FOLLOW]]

  def _add_lives(self, live, ts, xid, author) -> None:
    if not len(live):
      return
    ids = np.concatenate([self.live_ids, live])
    first = np.concatenate([self.live_first, ts])
    last = np.concatenate([self.live_last, np.stack([ts, xid, author], -1)])
    self.live_ids, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    self.live_first = np.full(len(self.live_ids), NEVER, _I)
    np.minimum.at(self.live_first, inverse, first)
    order = np.lexsort((last[:, 1], last[:, 0], inverse))  # by live, then time: the last row
    ends = np.flatnonzero(np.r_[inverse[order][1:] != inverse[order][:-1], True])
    self.live_last = last[order[ends]]

  def drop_pending(self, complete: int) -> None:
    """Events without an exposure event that can no longer get one (ts < ``complete``)."""
    if len(self.pending):
      stale = self.pending["ts"] < complete
      self.stats["orphan_events"] += int(stale.sum())
      self.pending.keep(~stale)

  # ------------------------------------------------------------------ features

  def live_start_of(self, live: np.ndarray) -> np.ndarray:
    """Each live's start as the batch engine takes it for events before any query: lives.
    start_ms, else its first exposure."""
    lives = self.lookups["lives"]
    rows = lives.rows(live)
    pos = np.minimum(np.searchsorted(self.live_ids, live), max(len(self.live_ids) - 1, 0))
    first = self.live_first[pos] if len(self.live_ids) else np.full(len(live), NEVER, _I)
    return np.where(rows >= 0, lives.get("start_ms", live, 0), first)

  def context(self) -> "StateContext":
    return StateContext(self)

  # ------------------------------------------------------------------ bounded state

  def prune(self, complete: int, crowd_horizon: int) -> None:
    """Evicts what no query at or after ``complete`` needs; crowd events before
    ``crowd_horizon`` become carry."""
    x = self.x
    live = x["domain"] == LIVE
    recent = x["ts"] >= complete - self.ttl_ms
    hist = np.zeros(len(x), bool)
    if live.any():
      li = np.flatnonzero(live)
      hist[li] = _keep_recent(x["user"][li], x["ts"][li], x["exposure_id"][li], complete,
                              self.lv_keep)
    keep = recent | (live & (~x["done"] | hist))
    gone = np.flatnonzero(~keep & live)
    if len(gone):
      self._carry_viewers(gone)
    if not keep.all():
      x.keep(keep)
      self._reindex()
    open_ids = x["exposure_id"][(x["domain"] == LIVE) & ~x["done"]]
    self.events.keep(np.isin(self.events["exposure_id"], open_ids))
    old = self.crowd["ts"] < crowd_horizon
    if old.any():
      c = {k: self.crowd[k][old] for k in CROWD_SPEC}
      none = np.zeros(0, _I)
      viewers = {"enter_live": none, "enter_ts": none, "leave_live": none, "leave_ts": none}
      self._add_carry(c["live"], c["ts"], c["code"], c["value"], viewers)
      self.crowd.keep(~old)
    if len(self.plays):
      self.plays.keep(_keep_recent(self.plays["user"], self.plays["ts"], self.plays["seq"],
                                   complete, self.sv_keep))

  def _carry_viewers(self, rows: np.ndarray) -> None:
    first = self.x["first"][rows]
    viewers = crowd_lib.viewer_times(self.x["item"][rows], first[:, EC[S.CLICK]],
                                     first[:, EC[S.WATCH_END]])
    none = np.zeros(0, _I)
    self._add_carry(none, none, np.zeros(0, np.int8), np.zeros(0), viewers)

  def _add_carry(self, live, ts, code, value, viewers) -> None:
    start = self.live_start_of(live)
    lv, _, totals = crowd_lib.carry_totals(live, ts, code, value, start, viewers,
                                           lambda t: np.zeros(len(t), _I))
    ids = np.concatenate([self.carry.live, lv])
    all_totals = np.concatenate([self.carry.totals, totals])
    ids, inverse = np.unique(ids, return_inverse=True)
    summed = np.zeros((len(ids), all_totals.shape[1]), _I)
    np.add.at(summed, inverse.reshape(-1), all_totals)
    self.carry = crowd_lib.Carry(ids, summed)

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_index")
    state.pop("lookups")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.lookups = {name: Lookup.build(self.side_tables[name], name, SIDE[name][1])
                    for name in SIDE}
    self._reindex()


class StateContext(Context):
  """``moment.engine.Context`` over a ``StreamState``: the same ``request_features``."""

  def __init__(self, st: StreamState):  # pylint: disable=super-init-not-called
    lk = st.lookups
    self.log = types.SimpleNamespace(users=lk["users"], authors=lk["authors"],
                                     lives=lk["lives"], videos=lk["videos"])
    self._exposed_lives, self._first_exposure = st.live_ids, st.live_first
    self._last_author, self._exposed_users = st.live_last[:, 2], st.users
    x = st.x
    live = np.flatnonzero(x["domain"] == LIVE)
    live = live[np.argsort(x["exposure_id"][live], kind="stable")]  # the batch's row order
    self.rows = live  # x row of each live-history record
    first = x["first"][live]
    click, watch = first[:, EC[S.CLICK]], first[:, EC[S.WATCH_END]]
    item = x["item"][live]
    c = st.crowd
    self.crowd = crowd_lib.CrowdIndex(c["live"], c["ts"], c["code"], c["value"],
                                      **crowd_lib.viewer_times(item, click, watch),
                                      carry=st.carry)
    self.lv = LiveHistory(x["user"][live], x["ts"][live], item, x["author"][live],
                          lk["lives"].get("category", item, -1), watch,
                          x["watch_value"][live], live_action_ts(first))
    p = st.plays
    order = _play_order(p["ts"], p["exposure_id"], p["seq"])
    plays, _ = short_video_plays(p["user"][order], p["ts"][order], p["item"][order],
                                 p["author"][order], p["value"][order], p["like_ts"][order],
                                 p["follow_ts"][order], lk["videos"])
    self.sv = ShortVideoHistory(**plays)

  def record_of(self, x_rows: np.ndarray) -> np.ndarray:
    """The live-history record of x rows (-1: not a record)."""
    pos = np.full(len(self.rows) and self.rows.max() + 1 or 0, -1, _I)
    pos[self.rows] = np.arange(len(self.rows))
    x_rows = np.asarray(x_rows, _I)
    inside = x_rows < len(pos)
    return np.where(inside, pos[np.where(inside, x_rows, 0)] if len(pos) else -1, -1)


def _play_order(ts: np.ndarray, xid: np.ndarray, seq: np.ndarray):
  """The batch engine's play order, by (ts, exposure id, log row); an in-order stream appends
  plays in it already (then no sort)."""
  if len(ts) < 2:
    return slice(None)
  dt, dx = np.diff(ts), np.diff(xid)
  if np.all((dt > 0) | ((dt == 0) & ((dx > 0) | ((dx == 0) & (np.diff(seq) > 0))))):
    return slice(None)
  return np.lexsort((seq, xid, ts))
