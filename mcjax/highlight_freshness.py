"""Highlight freshness: how soon after a highlight starts a model's predicted CTR for that live
rises. One implementation for the batch ablation (``experiments.ablation_report``), the
real-time loop's comparison (``launch.realtime --compare``) and
``experiments.realtime_quality --freshness``.

Two measures over the evaluation records of each highlight's live (online predictions, so
every prediction is made before the model trained on its window):

* per highlight (``rise_delays``): the first time ROLL consecutive records average more than
  the live's pre-highlight mean (PRE_MS before the start) + RISE_SIGMAS standard errors, before
  the highlight ends; a placebo (the same rule PLACEBO_MS before each highlight) measures how
  often the rule fires with no highlight at all;
* pooled (``uplift_curve``): the mean logit uplift over the pre-highlight mean, in BIN_MS bins
  from PRE_MS before to POST_MS after the start, summed over highlights and seeds; the oracle's
  curve (true p_click) shows the real jump. ``pooled_rise_s``: the end of the first bin after
  the start where a model's uplift reaches half the oracle's mean uplift over its first 2 min.

For the real-time loop (``preds/part_*.npz`` of its workdirs): ``SWITCHES`` are the config
switches compared with a run (on_close samples, no crowd features), ``loop_preds`` reads a
run's scored records, ``measure`` gives every run's rise delays and uplift curve (and the
oracle's), ``strongest`` picks one highlight to show and ``around`` a live's per-bin mean
around it.
"""

from __future__ import annotations

import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

PRE_MS = 5 * 60_000
POST_MS = 6 * 60_000
BIN_MS = 30_000
ROLL = 3
RISE_SIGMAS = 2.0
PLACEBO_MS = 15 * 60_000
ORACLE = "oracle (p_click)"
TABLE = {"tablefmt": "github", "disable_numparse": True}
# The runs a real-time loop run is compared with: name -> (config key, value).
SWITCHES = {"on_close": ("moment.mode", "on_close"), "no_crowd": ("model.use_crowd", False)}
LOOP_FIELDS = ("probs", "live_id", "sample_ts_ms", "oracle_p_click")


def live_index(live: np.ndarray, ts: np.ndarray) -> dict:
  """Records sorted by (live, time) under one int64 key; ``order`` maps back to the input."""
  lives, rank = np.unique(live, return_inverse=True)
  t0 = int(ts.min()) - PRE_MS - PLACEBO_MS
  span = int(ts.max()) - t0 + POST_MS + 1
  key = rank.astype(np.int64) * span + (ts - t0)
  order = np.argsort(key, kind="stable")
  return {"key": key[order], "order": order, "lives": lives, "t0": t0, "span": span}


def highlight_ranges(ix: dict, highlights, shift_ms: int = 0) -> dict:
  """Per highlight of a live with records: base key, start, and the sorted-record ranges
  [lo_pre, lo) before the start, [lo, hi) during, [lo, hi_post) in the POST_MS after it;
  ``row``: the highlight's row in ``highlights``."""
  h_live = highlights["live_id"].to_numpy()
  rank = np.searchsorted(ix["lives"], h_live)
  known = (rank < len(ix["lives"])) & (ix["lives"][np.minimum(rank, len(ix["lives"]) - 1)]
                                       == h_live)
  base = rank[known].astype(np.int64) * ix["span"]
  start = highlights["start_ms"].to_numpy()[known] - ix["t0"] + shift_ms
  end = highlights["end_ms"].to_numpy()[known] - ix["t0"] + shift_ms

  def at(offset):  # the first record of the highlight's live at or after this offset
    return np.searchsorted(ix["key"], base + np.clip(offset, 0, ix["span"] - 1))
  return {"base": base, "start": start, "lo_pre": at(start - PRE_MS), "lo": at(start),
          "hi": at(end), "hi_post": at(start + POST_MS), "row": np.flatnonzero(known)}


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(range id, index) of every index in the ranges [lo, hi)."""
  counts = np.maximum(hi - lo, 0)
  rid = np.repeat(np.arange(len(lo)), counts)
  idx = lo[rid] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  return rid, idx


def rise_delays(p: np.ndarray, ix: dict, highlights, shift_ms: int = 0) -> np.ndarray:
  """Seconds from each highlight's start to the rise (NaN: none before it ends); highlights
  with fewer than 3 records before or ROLL during are left out."""
  h = highlight_ranges(ix, highlights, shift_ms)
  p = p.astype(np.float64)[ix["order"]]
  c1 = np.concatenate([[0.0], np.cumsum(p)])
  c2 = np.concatenate([[0.0], np.cumsum(p * p)])
  n_pre = h["lo"] - h["lo_pre"]
  ok = (n_pre >= 3) & (h["hi"] - h["lo"] >= ROLL)
  lo_pre, lo, hi, n_pre = h["lo_pre"][ok], h["lo"][ok], h["hi"][ok], n_pre[ok]
  mean = (c1[lo] - c1[lo_pre]) / n_pre
  var = np.maximum((c2[lo] - c2[lo_pre]) / n_pre - mean ** 2, 0.0) * n_pre / (n_pre - 1)
  thr = mean + RISE_SIGMAS * np.sqrt(var / ROLL)
  roll = (c1[ROLL:] - c1[:-ROLL]) / ROLL            # roll[i]: mean of p[i : i + ROLL]
  rid, idx = _expand(lo, hi - ROLL + 1)
  hit = roll[idx] > thr[rid]
  out = np.full(len(lo), np.nan)
  first, at = np.unique(rid[hit], return_index=True)
  last = idx[hit][at] + ROLL - 1
  out[first] = (ix["key"][last] - h["base"][ok][first] - h["start"][ok][first]) / 1000.0
  return out


def uplift_curve(p: np.ndarray, ix: dict, highlights) -> dict:
  """Sums and counts per BIN_MS bin (from -PRE_MS to +POST_MS around each start) of the
  records' logit(p) minus their highlight's pre-start mean logit."""
  h = highlight_ranges(ix, highlights)
  p = np.clip(p.astype(np.float64)[ix["order"]], 1e-6, 1 - 1e-6)
  z = np.log(p) - np.log1p(-p)
  n_pre = h["lo"] - h["lo_pre"]
  ok = np.flatnonzero(n_pre >= 3)
  c1 = np.concatenate([[0.0], np.cumsum(z)])
  pre_mean = (c1[h["lo"][ok]] - c1[h["lo_pre"][ok]]) / n_pre[ok]
  rid, idx = _expand(h["lo_pre"][ok], h["hi_post"][ok])
  rel = ix["key"][idx] - h["base"][ok][rid] - h["start"][ok][rid]
  n_bins = (PRE_MS + POST_MS) // BIN_MS
  b = np.clip((rel + PRE_MS) // BIN_MS, 0, n_bins - 1)
  return {"sum": np.bincount(b, z[idx] - pre_mean[rid], minlength=n_bins),
          "n": np.bincount(b, minlength=n_bins).astype(np.float64)}


def add_curves(a: dict | None, b: dict) -> dict:
  return dict(b) if a is None else {k: a[k] + b[k] for k in a}


def bin_starts_s() -> np.ndarray:
  return (np.arange((PRE_MS + POST_MS) // BIN_MS) * BIN_MS - PRE_MS) / 1000.0


def mean_curve(curve: dict) -> np.ndarray:
  with np.errstate(invalid="ignore", divide="ignore"):
    return curve["sum"] / curve["n"]


def pooled_rise_s(curve: dict, oracle: dict) -> float:
  """End of the first post-start bin reaching half the oracle's uplift over 0-120 s."""
  t = bin_starts_s()
  m, o = mean_curve(curve), mean_curve(oracle)
  target = 0.5 * np.nanmean(o[(t >= 0) & (t < 120)])
  hit = np.flatnonzero((t >= 0) & (m >= target))
  return float(t[hit[0]] + BIN_MS / 1000.0) if len(hit) else float("nan")


def table(delays: dict[str, list[np.ndarray]], curves: dict[str, dict]) -> str:
  """Per scorer: per-highlight rise statistics and the pooled uplift rise."""
  t = bin_starts_s()
  oracle = curves.get(ORACLE)
  rows = []
  for name in list(dict.fromkeys(list(curves) + list(delays))):
    d = np.concatenate(delays[name]) if name in delays else np.zeros(0)
    fin = d[np.isfinite(d)]
    med = [np.median(np.where(np.isfinite(v), v, np.inf)) for v in delays.get(name, [])]
    row = [name, len(d) or "-", f"{len(fin) / len(d):.2f}" if len(d) else "-",
           f"{np.median(fin):.0f}" if len(fin) else "-",
           " / ".join("∞" if not np.isfinite(x) else f"{x:.0f}" for x in med) or "-"]
    c = curves.get(name)
    if c is not None:
      m = mean_curve(c)
      row += [f"{np.nanmean(m[(t >= 0) & (t < 120)]):+.3f}",
              f"{np.nanmean(m[(t >= -120) & (t < 0)]):+.3f}"]
      r = pooled_rise_s(c, oracle) if oracle is not None else float("nan")
      row.append("-" if name == ORACLE else ("none in 6 min" if not np.isfinite(r)
                                             else f"{r:.0f}"))
    else:
      row += ["-", "-", "-"]
    rows.append(row)
  return tabulate(rows, ["scorer", "highlights", "share with a rise",
                         "median s to rise (rises only)", "median s per seed (no rise = ∞)",
                         "pooled logit uplift 0-2 min", "pooled uplift -2-0 min",
                         "pooled rise (s)"], **TABLE)


def plot(delays: dict[str, list[np.ndarray]], curves: dict[str, dict], path: str) -> None:
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
  t = bin_starts_s() + BIN_MS / 2000.0
  for name, c in curves.items():
    ax1.plot(t, mean_curve(c), label=name, lw=2 if name == ORACLE else 1.2,
             ls="--" if name == ORACLE else "-")
  ax1.axvline(0, color="k", lw=0.8)
  ax1.set_xlabel("seconds since the highlight starts")
  ax1.set_ylabel("mean logit uplift of predicted CTR")
  ax1.set_title("Pooled over highlights and seeds")
  ax1.legend(fontsize=7)
  bins = np.linspace(0, 360, 25)
  for name, ds in delays.items():
    d = np.concatenate(ds)
    ax2.hist(d[np.isfinite(d)], bins=bins, histtype="step", lw=1.5,
             label=f"{name} ({np.isfinite(d).mean():.0%} rise)")
  ax2.set_xlabel("seconds after the start until the live's predicted CTR rises")
  ax2.set_ylabel("highlights")
  ax2.set_title("Per highlight")
  ax2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def loop_preds(work: str) -> dict:
  """``LOOP_FIELDS`` of the records a real-time loop run scored (``WORK/preds/part_*.npz``)."""
  paths = sorted(glob.glob(os.path.join(work, "preds", "part_*.npz")))
  if not paths:
    raise FileNotFoundError(f"{os.path.join(work, 'preds')}: no scored records (part_*.npz)")
  parts = []
  for path in paths:
    with np.load(path) as z:
      parts.append({k: z[k] for k in LOOP_FIELDS})
  return {k: np.concatenate([p[k] for p in parts]) for k in LOOP_FIELDS}


def measure(preds: dict[str, dict], highlights) -> tuple[dict, dict]:
  """(rise delays, uplift curves), as ``table`` and ``plot`` take them, of each run's served
  p(click) (``loop_preds`` of each, by name) and first of the oracle's p_click (the first
  run's records; left out when the log has no oracle)."""
  delays, curves = {}, {}
  first = next(iter(preds.values()))
  if np.isfinite(first["oracle_p_click"]).any():
    ix = live_index(first["live_id"], first["sample_ts_ms"])
    delays[ORACLE] = [rise_delays(first["oracle_p_click"], ix, highlights)]
    curves[ORACLE] = uplift_curve(first["oracle_p_click"], ix, highlights)
  for name, p in preds.items():
    ix = live_index(p["live_id"], p["sample_ts_ms"])
    delays[name] = [rise_delays(p["probs"][:, 0], ix, highlights)]
    curves[name] = uplift_curve(p["probs"][:, 0], ix, highlights)
  return delays, curves


def strongest(preds: dict, highlights) -> int | None:
  """The row in ``highlights`` of the strongest highlight (its ``strength``; without that
  column, the most records during it) among those ``rise_delays`` measures on ``preds``
  (3 records before, ROLL during); None: no such highlight."""
  if not len(preds["live_id"]) or not highlights.num_rows:
    return None
  h = highlight_ranges(live_index(preds["live_id"], preds["sample_ts_ms"]), highlights)
  during = h["hi"] - h["lo"]
  ok = np.flatnonzero((h["lo"] - h["lo_pre"] >= 3) & (during >= ROLL))
  if not len(ok):
    return None
  if "strength" in highlights.column_names:
    score = highlights["strength"].to_numpy()[h["row"][ok]].astype(np.float64)
  else:
    score = during[ok].astype(np.float64)
  return int(h["row"][ok[np.argmax(score)]])


def around(p: np.ndarray, preds: dict, live_id: int, start_ms: int, before_ms: int,
           after_ms: int, bin_ms: int = 60_000) -> tuple[np.ndarray, np.ndarray]:
  """(bin starts in seconds from ``start_ms``, mean of ``p`` per bin; NaN: no record) over the
  records of ``live_id`` from ``before_ms`` before ``start_ms`` to ``after_ms`` after it."""
  rel = preds["sample_ts_ms"].astype(np.int64) - int(start_ms)
  sel = (preds["live_id"] == live_id) & (rel >= -before_ms) & (rel < after_ms)
  n_bins = -(-(before_ms + after_ms) // bin_ms)
  b = (rel[sel] + before_ms) // bin_ms
  p = np.asarray(p, np.float64)[sel]
  keep = np.isfinite(p)
  n = np.bincount(b[keep], minlength=n_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.bincount(b[keep], p[keep], minlength=n_bins) / n
  return (np.arange(n_bins) * bin_ms - before_ms) / 1000.0, mean
