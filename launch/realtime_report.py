"""report.md of a real-time loop run (``launch.realtime``): its numbers and two plots.

* ``freshness.png``: histogram of each trained sample's wall seconds from its emission to the
  swap that served a version holding it (end to end), and of emission -> trained;
* ``highlight.png``: the served p(click) of every exposure of the live with the most
  exposures inside an oracle highlight, around that highlight's onset (event time), beside
  the oracle's p(click) when the log has one (means per event minute) and the share of its
  exposures inside a highlight;
* ``compare.png`` (``launch.realtime --compare``): the served p(click) of this run and of the
  compared runs (on_close samples, no crowd features) around the onset of the strongest
  oracle highlight, beside the oracle's p(click), and the mean logit uplift pooled over every
  highlight; with the rise-delay table (``mcjax.highlight_freshness``).
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mcjax import highlight_freshness as hl  # noqa: E402
from mcjax.train.realtime import PredStore  # noqa: E402

MAIN = "realtime"  # this run's name in the comparison


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


def plot_compare(work: str, preds: dict, curves: dict, highlights, row: int | None) -> str:
  """compare.png: left, the strongest highlight (``row`` of ``highlights``): each run's
  served p(click) of its live per event minute around the onset and the oracle's; right, the
  pooled mean logit uplift of each run and the oracle."""
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
  color = {name: f"C{i}" for i, name in enumerate(preds)} | {hl.ORACLE: "tab:red"}
  if row is not None:
    h = {k: highlights[k][row].as_py() for k in ("live_id", "start_ms", "end_ms")}
    one = highlights.slice(row, 1)
    span = h["end_ms"] - h["start_ms"]
    before, after = 10 * 60_000, min(span + 10 * 60_000, 30 * 60_000)
    ax1.axvspan(0, span / 60_000, color="orange", alpha=0.2, label="highlight")
    for name, p in preds.items():
      d = hl.rise_delays(p["probs"][:, 0], hl.live_index(p["live_id"], p["sample_ts_ms"]), one)
      rise = "no rise" if not len(d) or not np.isfinite(d[0]) else f"rise {d[0]:.0f} s"
      t, m = hl.around(p["probs"][:, 0], p, h["live_id"], h["start_ms"], before, after)
      ax1.plot(t / 60 + 0.5, m, "-o", ms=3, lw=1.2, color=color[name], label=f"{name} ({rise})")
    first = next(iter(preds.values()))
    t, m = hl.around(first["oracle_p_click"], first, h["live_id"], h["start_ms"], before, after)
    if np.isfinite(m).any():
      ax1.plot(t / 60 + 0.5, m, "--", color=color[hl.ORACLE], lw=2, label=hl.ORACLE)
    strength = (f", strength {highlights['strength'][row].as_py():.2f}"
                if "strength" in highlights.column_names else "")
    ax1.set_title(f"Strongest highlight: live {h['live_id']}, {span / 60_000:.1f} min"
                  f"{strength}", fontsize=9)
    ax1.legend(fontsize=7)
  ax1.axvline(0, color="k", lw=0.8)
  ax1.set_xlabel("event minutes since the highlight's onset")
  ax1.set_ylabel("served p(click), mean per event minute")
  t = hl.bin_starts_s() + hl.BIN_MS / 2000.0
  for name, c in curves.items():
    ax2.plot(t, hl.mean_curve(c), label=name, color=color.get(name),
             lw=2 if name == hl.ORACLE else 1.2, ls="--" if name == hl.ORACLE else "-")
  ax2.axvline(0, color="k", lw=0.8)
  ax2.set_xlabel("event seconds since a highlight's onset")
  ax2.set_ylabel("mean logit uplift over the pre-onset mean")
  ax2.set_title("Pooled over every highlight", fontsize=9)
  ax2.legend(fontsize=7)
  fig.tight_layout()
  out = os.path.join(work, "compare.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def compare_section(work: str, compared: dict[str, str], log_dir: str | None,
                    wanted: list[str]) -> tuple[list[str], dict]:
  """report.md's lines comparing this run with ``compared`` ({name: workdir}), and the rise
  statistics per run for report.json."""
  from mcjax.eventlog import io as log_io  # pylint: disable=g-import-not-at-top
  lines = ["## Highlight freshness: realtime / " + " / ".join(wanted), "",
           f"`{MAIN}` is this run; "
           + "; ".join(f"`{n}` the same loop with `{k}={v}`" for n, (k, v)
                       in hl.SWITCHES.items() if n in wanted)
           + " (`compare/NAME/`, unpaced). Per oracle highlight, the event seconds from its "
           f"start until {hl.ROLL} consecutive records of its live are served a p(click) "
           f"above the live's mean over the {hl.PRE_MS // 60_000} minutes before + "
           f"{hl.RISE_SIGMAS:g} standard errors (`mcjax.highlight_freshness`).", ""]
  missing = [n for n in wanted if n not in compared]
  if missing:
    lines += [f"Not finished (stopped): {', '.join(missing)}.", ""]
  highlights = log_io.read_oracle(log_dir, "highlights.parquet") if log_dir else None
  if highlights is None:
    return lines + ["No comparison: the log has no oracle highlights "
                    "(`_oracle/highlights.parquet`).", ""], {}
  preds = {MAIN: hl.loop_preds(work)}
  preds.update({n: hl.loop_preds(d) for n, d in compared.items()})
  delays, curves = hl.measure(preds, highlights)
  row = hl.strongest(preds[MAIN], highlights)
  plot_compare(work, preds, curves, highlights, row)
  lines += [hl.table(delays, curves), "", "![compare](compare.png)", ""]
  stats = {}
  for name, ds in delays.items():
    d = np.concatenate(ds)
    fin = d[np.isfinite(d)]
    stats[name] = {"highlights": int(len(d)),
                   "rise_share": float(len(fin) / len(d)) if len(d) else None,
                   "median_rise_s": float(np.median(fin)) if len(fin) else None}
  return lines, stats


def write(work: str, out: dict, compared: dict[str, str] | None = None,
          log_dir: str | None = None, wanted: list[str] | None = None) -> str:
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
  pub = r.get("publish_dir")
  if pub and pub["versions"]:
    kinds = f"as deltas with a whole base every {pub['full_every']}" if pub["delta"] else "whole"
    got = [f"{k} {pub[f'{k}_bytes_median']:,.0f} bytes in {pub[f'{k}_write_s_median']:.3f} s"
           for k in ("base", "delta") if pub[f"{k}_bytes_median"] is not None]
    lines += [f"Written to --publish_dir {kinds}: {len(pub['versions'])} versions; on disk "
              f"(median) {', '.join(got)}.", ""]
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
  summary = {"freshness": fresh, "requests": req}
  if compared is not None:
    more, summary["compare"] = compare_section(work, compared, log_dir,
                                               wanted or list(compared))
    lines += more
  text = "\n".join(lines)
  with open(os.path.join(work, "report.md"), "w") as f:
    f.write(text)
  with open(os.path.join(work, "report.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return text
