"""The run report: a Markdown page with the metric tables and PNG plots of several runs.

Input is each run's ``metrics.json`` (see README, "metrics.json"); output is ``report.md``
plus ``plots/*.png`` beside it. Plots: CTR AUC per evaluation window for `full` vs
`no_moment` with the share of exposures inside highlight moments shaded behind it, and CTR
AUC of live-sparse vs other users for `full` vs `no_cross`.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from mcjax.eventlog.files import atomic_write  # noqa: E402

REPORT_TASKS = ("ctr", "lvtr", "ltr")


def _fmt(x, digits=4):
  return "-" if x is None else f"{x:.{digits}f}"


def metric_table(runs: dict[str, dict], tasks=REPORT_TASKS) -> str:
  """A Markdown table: one row per run, AUC / UAUC / GAUC / logloss per task."""
  headers = ["config"]
  for t in tasks:
    headers += [f"{t} AUC", f"{t} UAUC", f"{t} GAUC", f"{t} logloss (base rate)"]
  rows = []
  for name, m in runs.items():
    row = [name]
    for t in tasks:
      r = m["overall"].get(t, {})
      row += [_fmt(r.get("auc")), _fmt(r.get("uauc")), _fmt(r.get("gauc")),
              f"{_fmt(r.get('logloss'))} ({_fmt(r.get('base_logloss'))})"]
    rows.append(row)
  return tabulate(rows, headers, tablefmt="github")


def slice_table(runs: dict[str, dict], task="ctr") -> str:
  """A Markdown table of one task's AUC per slice (highlight, live-sparse, ...)."""
  names = sorted({s for m in runs.values() for s in m.get("slices", {})})
  rows = []
  for name, m in runs.items():
    rows.append([name] + [_fmt(m.get("slices", {}).get(s, {}).get(task, {}).get("auc"))
                          for s in names])
  return tabulate(rows, ["config"] + [f"{s} {task} AUC" for s in names], tablefmt="github")


def plot_auc_over_time(runs: dict[str, dict], names, path: str, task="ctr") -> str | None:
  present = [n for n in names if n in runs]
  if not present:
    return None
  fig, ax = plt.subplots(figsize=(9, 4))
  ref = runs[present[0]]["windows"]
  t0 = ref[0]["start_ms"] if ref else 0
  share_ax = ax.twinx()
  for w in ref:
    share = w.get("highlight_share")
    if share:
      share_ax.axvspan((w["start_ms"] - t0) / 3.6e6, (w["end_ms"] - t0) / 3.6e6,
                       color="orange", alpha=min(0.6, 0.15 + share), lw=0)
  share_ax.set_yticks([])
  for n in present:
    ws = [w for w in runs[n]["windows"] if w.get(task, {}).get("auc") is not None]
    x = [(w["start_ms"] + w["end_ms"]) / 2 for w in ws]
    ax.plot((np.array(x) - t0) / 3.6e6, [w[task]["auc"] for w in ws], label=n, lw=1.2)
  ax.set_zorder(share_ax.get_zorder() + 1)
  ax.patch.set_visible(False)
  ax.set_xlabel("event time (hours since the log starts)")
  ax.set_ylabel(f"{task.upper()} AUC per window (online)")
  ax.set_title("Online AUC; orange = share of exposures inside highlight moments")
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_slices(runs: dict[str, dict], names, slices, path: str, task="ctr") -> str | None:
  present = [n for n in names if n in runs]
  if not present:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  width = 0.8 / len(present)
  for i, n in enumerate(present):
    vals = [runs[n].get("slices", {}).get(s, {}).get(task, {}).get("auc") or np.nan
            for s in slices]
    ax.bar(np.arange(len(slices)) + i * width, vals, width, label=n)
  ax.set_xticks(np.arange(len(slices)) + width * (len(present) - 1) / 2, slices)
  ax.set_ylabel(f"{task.upper()} AUC")
  finite = [v for n in present for s in slices
            if (v := runs[n].get("slices", {}).get(s, {}).get(task, {}).get("auc"))]
  if finite:
    ax.set_ylim(min(finite) - 0.02, max(finite) + 0.02)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def collision_table(report: dict[str, dict]) -> str:
  """A Markdown table of ``model.collisions.collision_report``: per embedding table, its rows,
  the distinct ids the log can put there and the share of them sharing a row."""
  rows = [[t, f"{r['rows']:,}", f"{r['distinct_ids']:,}", f"{r['colliding_ids']:,}",
           f"{r['collision_rate']:.2%}"] for t, r in report.items()]
  return tabulate(rows, ["table", "rows", "distinct ids", "colliding ids", "collision rate"],
                  tablefmt="github")


def write_report(workdir: str, runs: dict[str, dict], world_summary: str | None = None,
                 timings: dict[str, float] | None = None,
                 collisions: dict[str, dict] | None = None) -> str:
  """Writes ``workdir/report.md`` and its plots; returns the report path."""
  plots = os.path.join(workdir, "plots")
  os.makedirs(plots, exist_ok=True)
  lines = ["# mcjax run report", ""]
  if world_summary:
    lines += ["## The world", "", "```", world_summary.rstrip(), "```", ""]
  lines += ["## Online (prequential) metrics, all windows", "",
            "Each evaluation window is scored before the model trains on it. In parentheses: "
            "the base-rate logloss (predicting the records' positive rate for all); a logloss "
            "near or above it means the model is not calibrated.", "",
            metric_table(runs), "", "## CTR AUC per slice", "", slice_table(runs), ""]
  p1 = plot_auc_over_time(runs, ("full", "no_moment"), os.path.join(plots, "auc_over_time.png"))
  if p1:
    lines += ["## Freshness: full vs no_moment over time", "",
              "![CTR AUC over time](plots/auc_over_time.png)", ""]
  p2 = plot_slices(runs, ("full", "no_cross"), ("live_sparse", "other"),
                   os.path.join(plots, "live_sparse.png"))
  if p2:
    lines += ["## Cross: live-sparse users vs the rest", "",
              "![CTR AUC live-sparse vs other](plots/live_sparse.png)", ""]
  if collisions:
    lines += ["## Hash collisions of the embedding tables", "",
              "Ids of the trained log hashed as training hashes them (64-bit ids folded on the "
              "host, then the per-feature salted hash): the share of distinct ids sharing a "
              "row with another id.", "", collision_table(collisions), ""]
  if timings:
    lines += ["## Wall time per stage", "",
              tabulate([[k, f"{v:.1f} s"] for k, v in timings.items()], ["stage", "time"],
                       tablefmt="github"), ""]
  path = os.path.join(workdir, "report.md")
  atomic_write(path, "\n".join(lines))
  return path


def load_metrics(path: str) -> dict:
  with open(path) as f:
    return json.load(f)
