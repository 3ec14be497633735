"""report.md of a real-time loop run (``launch.realtime``): its numbers and two plots.

* ``freshness.png``: histogram of each trained sample's wall seconds from its emission to the
  swap that served a version holding it (end to end), and of emission -> trained;
* ``highlight.png``: the served p(click) of every exposure of the live with the most
  exposures inside an oracle highlight, around that highlight's onset (event time), beside
  the oracle's p(click) when the log has one (means per event minute) and the share of its
  exposures inside a highlight.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mcjax.train.realtime import PredStore  # noqa: E402


def _fmt(p: dict) -> str:
  return "-" if not p.get("n") else f"{p['p50']:.3f} / {p['p99']:.3f} / {p['max']:.3f}"


def plot_freshness(work: str) -> str | None:
  path = os.path.join(work, "freshness_e2e_s.npy")
  if not os.path.exists(path):
    return None
  e2e = np.load(path)
  if not len(e2e):
    return None
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.hist(e2e, bins=60, color="tab:blue")
  ax.set_xlabel("wall seconds: sample emitted -> served (end to end)")
  ax.set_ylabel("training samples")
  ax.set_title(f"Freshness: p50 {np.percentile(e2e, 50):.2f} s, p99 "
               f"{np.percentile(e2e, 99):.2f} s", fontsize=9)
  fig.tight_layout()
  out = os.path.join(work, "freshness.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_lag(work: str, points: list) -> str | None:
  """The stream engine's watermark lag over wall time (a paced source)."""
  if not points:
    return None
  t, _, lag = (np.asarray(c, np.float64) for c in zip(*points))
  fig, ax = plt.subplots(figsize=(7, 3))
  ax.plot(t, lag, lw=1)
  ax.set_xlabel("wall seconds since the stream started")
  ax.set_ylabel("watermark lag (wall s)")
  ax.set_title(f"Watermark lag: max {lag.max():.2f} s, at the end {lag[-1]:.2f} s", fontsize=9)
  fig.tight_layout()
  out = os.path.join(work, "lag.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_highlight(work: str) -> tuple[str | None, str]:
  store = PredStore(os.path.join(work, "preds"))
  store.restore(10**9)
  recs = store.all()
  if not recs or not (recs["in_highlight"] == 1).any():
    return None, "no scored exposure inside an oracle highlight"
  hl = recs["in_highlight"] == 1
  lives, counts = np.unique(recs["live_id"][hl], return_counts=True)
  live = lives[np.argmax(counts)]
  mine = recs["live_id"] == live
  onset = int(recs["sample_ts_ms"][mine & hl].min())
  near = mine & (np.abs(recs["sample_ts_ms"] - onset) <= 30 * 60_000)
  x = (recs["sample_ts_ms"][near] - onset) / 60_000
  oracle = recs["oracle_p_click"][near]
  minute = np.floor(x).astype(np.int64)
  bins = np.unique(minute)
  mean = lambda v: np.array([np.nanmean(v[minute == m]) if np.isfinite(v[minute == m]).any()
                             else np.nan for m in bins])  # noqa: E731
  fig, ax = plt.subplots(figsize=(8, 3.8))
  share = ax.twinx()
  share.bar(bins + 0.5, mean(hl[near].astype(float)), width=1.0, color="orange", alpha=0.25)
  share.set_ylabel("share of its exposures in a highlight")
  share.set_ylim(0, 1)
  ax.set_zorder(share.get_zorder() + 1)
  ax.patch.set_visible(False)
  ax.plot(bins + 0.5, mean(recs["probs"][near, 0]), "-o", ms=3, label="served p(click)")
  if np.isfinite(oracle).any():
    ax.plot(bins + 0.5, mean(oracle), "-", color="tab:red", label="oracle p(click)")
  ax.axvline(0, color="orange", lw=1)
  ax.set_xlabel("event minutes since the highlight's onset")
  ax.set_ylabel("p(click), mean per event minute")
  versions = recs["version"][near]
  ax.set_title(f"live {live}: {int(hl[mine].sum())} exposures inside highlights; versions "
               f"{versions.min()}..{versions.max()} answered", fontsize=9)
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  out = os.path.join(work, "highlight.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out, f"live {live}, onset at {onset} ms"


def write(work: str, out: dict) -> str:
  r = out["realtime"]
  fresh, req = r["freshness"], r.get("requests")
  lines = ["# Real-time loop", "",
           f"{r['trained_rows']} training samples in {r['steps']} steps, {r['wall_s']} s of wall "
           f"time for {r['logged_s']:.0f} logged seconds ({r['speed_factor']}x real time); "
           f"{fresh['versions']} versions published.", "",
           "| | p50 / p99 / max (wall s) |", "|---|---|",
           f"| emitted -> trained | {_fmt(fresh['emitted_to_trained_s'])} |",
           f"| trained -> served | {_fmt(fresh['trained_to_served_s'])} |",
           f"| end to end | {_fmt(fresh['end_to_end_s'])} |",
           f"| lag behind the replay schedule | {_fmt(r['lag_s'])} |", ""]
  b = r["bytes_per_version"]
  if b["whole_median"]:
    lines += [f"Bytes per version (median): whole {b['whole_median']:,.0f}, as the changed "
              f"rows {b['delta_median']:,.0f} ({b['delta_median'] / b['whole_median']:.1%}).",
              ""]
  if req:
    lines += [f"Requests: {req['requests']} at {req['rate_per_s']}/s, dropped "
              f"{req['dropped']}, latency {_fmt(req['latency_s'])} s, "
              f"{req['versions_served']} versions answered.", ""]
  lines += ["| task | AUC | GAUC | logloss | base logloss | n |", "|---|---|---|---|---|---|"]
  for task, m in out["overall"].items():
    lines.append(f"| {task} | {m.get('auc')} | {m.get('gauc')} | {m.get('logloss')} | "
                 f"{m.get('base_logloss')} | {m.get('n')} |")
  lines.append("")
  if plot_freshness(work):
    lines += ["![freshness](freshness.png)", ""]
  engine = r.get("engine")
  if engine:
    lag = engine["watermark_lag_s"]
    lines += [f"Fed by the stream engine: {engine['counts']['events_in']:,} events in, dead "
              f"letters {engine['dead'] or 0}; watermark lag "
              + (f"p50 / p99 / max {lag['p50_s']:.2f} / {lag['p99_s']:.2f} / "
                 f"{lag['max_s']:.2f} s." if lag["samples"] else "not measured (unpaced)."),
              ""]
    if plot_lag(work, lag.get("points", [])):
      lines += ["![lag](lag.png)", ""]
  path, what = plot_highlight(work)
  lines += [f"![highlight](highlight.png) ({what})" if path else f"Highlight plot: {what}.", ""]
  text = "\n".join(lines)
  with open(os.path.join(work, "report.md"), "w") as f:
    f.write(text)
  with open(os.path.join(work, "report.json"), "w") as f:
    json.dump({"freshness": fresh, "requests": req}, f, indent=1)
  return text
