"""Rules across a log's tables that the per-table checks of ``validate`` cannot see.

* ``no_live_exposure``: a log without a live exposure has nothing to build samples from,
  train or score on; it is refused at the door, before any engine work.
* ``outside_live_span``: a live exposure more than ``LIVE_SPAN_TOLERANCE_MS`` before its
  live's ``start_ms`` or after its ``end_ms`` (lives.parquet) is a wrong time or a wrong id.
* ``duplicate_rows``: event rows equal in every column to an earlier one (a record written
  twice): counted and reported as a warning, since each counts as one more event.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mcjax.eventlog import schema as S

LIVE_SPAN_TOLERANCE_MS = 24 * 3_600_000  # a day: clock skew and day-split rooms pass


def no_live_exposure(domain_events: dict[str, int]) -> bool:
  return not domain_events.get(f"{S.LIVE}/{S.EXPOSURE}", 0)


def outside_live_span(cols: dict[str, np.ndarray], dom: np.ndarray, ev: np.ndarray,
                      lives: pa.Table) -> tuple[str, np.ndarray]:
  """(the problem, the mask of the live exposure rows outside their live's span by more than
  the tolerance); rows whose live is missing from ``lives`` are left to the missing-live
  check."""
  rows = (dom == S.DOMAIN_CODE[S.LIVE]) & (ev == S.EVENT_CODE[S.EXPOSURE])
  ids = lives.column("live_id").to_numpy()
  order = np.argsort(ids, kind="stable")
  item, ts = cols["item_id"][rows], cols["ts_ms"][rows]
  at = np.clip(np.searchsorted(ids, item, sorter=order), 0, max(ids.size - 1, 0))
  bad = np.zeros(item.size, bool)
  if ids.size:
    pos = order[at]
    found = ids[pos] == item
    start = lives.column("start_ms").to_numpy()[pos]
    end = lives.column("end_ms").to_numpy()[pos]
    bad = found & ((ts < start - LIVE_SPAN_TOLERANCE_MS) | (ts > end + LIVE_SPAN_TOLERANCE_MS))
  mask = np.zeros(dom.size, bool)
  mask[np.flatnonzero(rows)[bad]] = True
  h = LIVE_SPAN_TOLERANCE_MS // 3_600_000
  return (f"live exposure outside its live's span in lives.parquet (start_ms - {h} h .. "
          f"end_ms + {h} h)", mask)


def duplicate_warnings(where: str, cols: dict[str, np.ndarray], dom: np.ndarray,
                       ev: np.ndarray, value: np.ndarray) -> list[str]:
  """The warning line about repeated event rows (none when there is none)."""
  dup = duplicate_rows(cols, dom, ev, value)
  if not dup.any():
    return []
  return [f"{where}: {int(dup.sum())} event row(s) repeat an earlier row in every column "
          f"(e.g. row {int(np.flatnonzero(dup)[0])}): each counts as one more event"]


def duplicate_rows(cols: dict[str, np.ndarray], dom: np.ndarray, ev: np.ndarray,
                   value: np.ndarray) -> np.ndarray:
  """Mask of the event rows equal in every column to an earlier row. Rows are sorted by
  (ts_ms, exposure_id), so only rows sharing both with a neighbour are compared."""
  ts, exp = cols["ts_ms"], cols["exposure_id"]
  same = (ts[1:] == ts[:-1]) & (exp[1:] == exp[:-1])
  tie = np.zeros(ts.size, bool)
  tie[1:] |= same
  tie[:-1] |= same
  mask = np.zeros(ts.size, bool)
  rows = np.flatnonzero(tie)
  if not rows.size:
    return mask
  part = pa.table({**{k: v[rows] for k, v in cols.items()}, "domain": dom[rows],
                   "event": ev[rows], "value": value[rows], "__row__": rows})
  keys = [n for n in part.column_names if n != "__row__"]
  firsts = part.group_by(keys, use_threads=False).aggregate([("__row__", "min")])
  mask[rows] = True
  mask[firsts.column("__row___min").to_numpy()] = False
  return mask
