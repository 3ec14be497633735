"""The run report: a Markdown page with the metric tables and PNG plots of several runs.

Input is each run's ``metrics.json`` (see README, "metrics.json"); output is ``report.md``
plus ``plots/*.png`` beside it: every task's metrics, the AUC of Ranking_Score against the
click and long-view labels, and optionally a scored example request. Plots: CTR AUC per
evaluation window for `full` vs `no_moment` (only windows with enough records and positives,
with a 95% band; the share of exposures inside highlight moments shaded behind it), and CTR
AUC of live-sparse vs other users for `full` vs `no_cross`.
"""

from __future__ import annotations

import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from mcjax.eventlog.files import atomic_write  # noqa: E402

TASK_NAMES = {"ctr": "click", "lvtr": "long view", "ltr": "like", "cmtr": "comment",
              "gtr": "gift", "wtr": "follow"}
# A window's AUC is plotted only with at least this many records and positives.
MIN_WINDOW_RECORDS, MIN_WINDOW_POSITIVES = 200, 20


def _fmt(x, digits=4):
  return "-" if x is None else f"{x:.{digits}f}"


def _tasks(runs: dict[str, dict]) -> list[str]:
  return list(dict.fromkeys(t for m in runs.values() for t in m["overall"]))


def metric_table(runs: dict[str, dict], tasks=None) -> str:
  """A Markdown table: one row per run and task, with AUC / UAUC / GAUC / logloss (base-rate
  logloss) and the records and positives behind them."""
  rows = []
  for t in tasks or _tasks(runs):
    for name, m in runs.items():
      r = m["overall"].get(t, {})
      rows.append([f"{t} ({TASK_NAMES.get(t, t)})", name, _fmt(r.get("auc")),
                   _fmt(r.get("uauc")), _fmt(r.get("gauc")),
                   f"{_fmt(r.get('logloss'))} ({_fmt(r.get('base_logloss'))})",
                   f"{r.get('n', 0):,}", f"{r.get('pos', 0):,}"])
  return tabulate(rows, ["task", "config", "AUC", "UAUC", "GAUC", "logloss (base rate)",
                         "records", "positives"], tablefmt="github", disable_numparse=True)


def ranking_table(runs: dict[str, dict]) -> str:
  """A Markdown table: AUC of Ranking_Score against the click and long-view labels, beside the
  AUC of that task's own probability."""
  rows = []
  for name, m in runs.items():
    r = m.get("ranking", {}).get("auc", {})
    row = [name]
    for t in ("ctr", "lvtr"):
      row += [_fmt(r.get(t, {}).get("auc")), _fmt(m["overall"].get(t, {}).get("auc"))]
    rows.append(row)
  return tabulate(rows, ["config", "Ranking_Score vs click", "p(click) vs click",
                         "Ranking_Score vs long view", "p(long view) vs long view"],
                  tablefmt="github", disable_numparse=True)


def slice_table(runs: dict[str, dict], task="ctr") -> str:
  """A Markdown table of one task's AUC per slice (highlight, live-sparse, ...)."""
  names = sorted({s for m in runs.values() for s in m.get("slices", {})})
  rows = []
  for name, m in runs.items():
    rows.append([name] + [_fmt(m.get("slices", {}).get(s, {}).get(task, {}).get("auc"))
                          for s in names])
  return tabulate(rows, ["config"] + [f"{s} {task} AUC" for s in names], tablefmt="github")


HEADROOM_TEXT = (
    "The world's oracle scores the same evaluation records with the true p(click) (its logit "
    "is base + user-author affinity + highlight strength) and with one of those terms removed. "
    "`oracle` is the ceiling (1 - its AUC is label noise no model removes); `oracle` minus "
    "`no affinity` / `no highlight` is what knowing that term is worth; `gap` = oracle - "
    "model. `learned`: the model's logit regressed on the three terms of the true logit "
    "(1 = carried at its true scale, 0 = not learned; - where the term does not vary): a gap "
    "with a low affinity coefficient is affinity not learned, with a low highlight coefficient "
    "(in highlights) a highlight not caught. `projected`: the AUC of that regression's fit "
    "(the model's logit without its residual, the part unrelated to the true logit): oracle - "
    "projected is the gap from carrying the terms at the wrong scale, projected - model the "
    "gap from the residual (`residual sd` beside the logit's sd): estimation noise of ids "
    "and histories, overfitting.")


def headroom_table(runs: dict[str, dict]) -> str | None:
  """A Markdown table of metrics.json's ``headroom`` (CTR against the oracle, per slice) of
  the runs that have one; None when no run has one."""
  rows = []
  for name, m in runs.items():
    for sl, h in m.get("headroom", {}).items():
      learned = h["learned"]
      rows.append([name, sl, f"{h['n']:,}", _fmt(h["auc"]), _fmt(h["oracle_auc"]),
                   _fmt(h["oracle_no_affinity_auc"]), _fmt(h["oracle_no_highlight_auc"]),
                   _fmt(None if h["auc"] is None or h["oracle_auc"] is None
                        else h["oracle_auc"] - h["auc"]),
                   " / ".join(_fmt(learned[k], 2) for k in ("rest", "affinity", "highlight")),
                   _fmt(h.get("projected_auc")),
                   f"{_fmt(h.get('residual_sd'), 2)} / {_fmt(h.get('logit_sd'), 2)}"])
  if not rows:
    return None
  return tabulate(rows, ["config", "slice", "records", "model", "oracle", "no affinity",
                         "no highlight", "gap", "learned: base / affinity / highlight",
                         "projected", "residual sd / logit sd"],
                  tablefmt="github", disable_numparse=True)


REFERENCE_TEXT = (
    "On the last {late:.0%} of the day's live exposures: each model's prequential CTR AUC beside "
    "the observable reference of the log (`mcjax.sim.reference`, fitted on the exposures before "
    "them): `LR reference`, a logistic regression on causal, oracle-shaped features (hour, "
    "activity bucket, author, the live's crowd in the last 30 s / 5 min, the user's whole "
    "short-video history against the candidate); `oracle, affinity estimated`, the oracle with "
    "its affinity term estimated from those histories, the other terms exact (R² of that "
    "estimate), near the best a model of these histories can reach; `oracle, both estimated`, "
    "its highlight term estimated too, from the live's crowd in the last 30 s and 5 min (R² of "
    "the highlight estimate), only the base term exact.")


def reference_rows(workdir: str, runs: dict[str, dict], log_dir: str,
                   late: float = 0.2) -> dict | None:
  """The observable reference on the live exposures of the last ``late`` share of the log's
  span that every run scored, and each run's CTR AUC on them (its ``preds/``); None for a log
  without oracle or runs without predictions."""
  from mcjax.eventlog import io as eio  # pylint: disable=g-import-not-at-top
  from mcjax.sim import metrics as sim_metrics  # pylint: disable=g-import-not-at-top
  from mcjax.sim import reference as ref  # pylint: disable=g-import-not-at-top
  if eio.read_oracle(log_dir, "exposures.parquet") is None:
    return None
  preds = {}
  for name in runs:
    files = sorted(glob.glob(os.path.join(workdir, name, "preds", "window_*.npz")))
    if not files:
      return None
    parts = [np.load(f) for f in files]
    keep = [p["mask"][:, 0] > 0 for p in parts]
    preds[name] = {k: np.concatenate([p[k][m] if p[k].ndim == 1 else p[k][m, 0]
                                      for p, m in zip(parts, keep)])
                   for k in ("exposure_id", "probs", "labels")}
  events = ref.load_events(log_dir)
  ex_ts = ref.live_exposure_times(events)
  lo, hi = int(ex_ts["ts_ms"].min()), int(ex_ts["ts_ms"].max())
  split = lo + int((1.0 - late) * (hi - lo))
  ids = ex_ts["exposure_id"][ex_ts["ts_ms"] >= split]
  for p in preds.values():
    ids = np.intersect1d(ids, p["exposure_id"])
  if len(ids) < 50:
    return None
  out = {"late": late, "reference": ref.reference(log_dir, split, ids, events=events),
         "models": {}}
  for name, p in preds.items():
    sel = np.isin(p["exposure_id"], ids)
    out["models"][name] = sim_metrics.auc(p["labels"][sel], p["probs"][sel])
  return out


def reference_table(rows: dict) -> str:
  r = rows["reference"]
  table = [[name, f"{r['n']:,}", _fmt(auc), _fmt(r["lr_auc"]),
            f"{_fmt(r['oracle_affinity_estimated_auc'])} (R² {r['affinity_r2']:.2f})",
            f"{_fmt(r['oracle_estimated_auc'])} (R² {r['highlight_r2']:.2f})",
            _fmt(r["oracle_auc"])] for name, auc in rows["models"].items()]
  return tabulate(table, ["config", "records", "model", "LR reference",
                          "oracle, affinity estimated", "oracle, both estimated", "oracle"],
                  tablefmt="github", disable_numparse=True)


def auc_standard_error(auc: float, pos: int, neg: int) -> float:
  """The standard error of an AUC from its positives and negatives (Hanley & McNeil, 1982)."""
  q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
  var = (auc * (1 - auc) + (pos - 1) * (q1 - auc * auc) + (neg - 1) * (q2 - auc * auc)) / (
      pos * neg)
  return float(np.sqrt(max(var, 0.0)))


def plot_points(windows: list[dict], task: str = "ctr"):
  """(x: window mid-times in ms, auc, standard error) of the windows whose AUC means
  something (``MIN_WINDOW_RECORDS`` records and ``MIN_WINDOW_POSITIVES`` positives and
  negatives); NaN between windows that are not adjacent, so no line spans a gap."""
  x, y, se, last_end = [], [], [], None
  for w in windows:
    r = w.get(task, {})
    n, pos = r.get("n", 0), r.get("pos", 0)
    if (r.get("auc") is None or n < MIN_WINDOW_RECORDS or pos < MIN_WINDOW_POSITIVES
        or n - pos < MIN_WINDOW_POSITIVES):
      continue
    if last_end is not None and w["start_ms"] != last_end:
      x, y, se = x + [np.nan], y + [np.nan], se + [np.nan]
    x.append((w["start_ms"] + w["end_ms"]) / 2)
    y.append(r["auc"])
    se.append(auc_standard_error(r["auc"], pos, n - pos))
    last_end = w["end_ms"]
  return np.array(x, float), np.array(y, float), np.array(se, float)


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
    x, y, se = plot_points(runs[n]["windows"], task)
    line, = ax.plot((x - t0) / 3.6e6, y, label=n, lw=1.2, marker=".", ms=3)
    ax.fill_between((x - t0) / 3.6e6, y - 1.96 * se, y + 1.96 * se, color=line.get_color(),
                    alpha=0.15, lw=0)
  ax.set_zorder(share_ax.get_zorder() + 1)
  ax.patch.set_visible(False)
  ax.set_xlabel("event time (hours since the log starts)")
  ax.set_ylabel(f"{task.upper()} AUC per window (online)")
  ax.set_title(f"Online AUC (windows with >= {MIN_WINDOW_RECORDS} records and >= "
               f"{MIN_WINDOW_POSITIVES} positives; band: 95% Hanley-McNeil)\n"
               "orange = share of exposures inside highlight moments", fontsize=9)
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


def _fusion(runs: dict[str, dict]) -> str:
  r = next((m["ranking"] for m in runs.values() if m.get("ranking")), None)
  if not r:
    return "no ranking block in metrics.json"
  w = " * ".join(f"p_{t}^{v:g}" for t, v in r["weights"].items() if v)
  return w if r["fusion"] == "product" else "weighted sum " + " + ".join(
      f"{v:g} p_{t}" for t, v in r["weights"].items() if v)


def example_section(ex: dict) -> list[str]:
  """The report's scored example request (``mcjax.serve.example.scored_example``)."""
  start, end, strength = ex["highlight"]
  lines = ["## A scored request inside a highlight", "",
           f"User {ex['user_id']} asks for lives at {ex['time']} (UTC), {ex['into_s']:.0f} s "
           f"into a highlight of live {ex['highlight_live']} (strength {strength:.2f}, "
           f"{(end - start) / 60000:.0f} min long). The {ex['n']} candidates are the lives on "
           f"air then; {ex['n_in_highlight']} of them are inside a highlight. Scored by "
           f"`{ex['run']}`'s final checkpoint with features from the events before that time "
           f"(`python -m launch.score`, `mcjax.serve.Scorer`). Top {len(ex['top'])}:", "",
           tabulate([[i + 1, r["live_id"], "yes" if r["in_highlight"] else "",
                      f"{r['ctr']:.3f}", f"{r['lvtr']:.3f}", f"{r['score']:.4f}"]
                     for i, r in enumerate(ex["top"])],
                    ["rank", "live", "in a highlight now", "p(click)", "p(long view)",
                     "Ranking_Score"], tablefmt="github"), "",
           f"The highlight's live ranks {ex['highlight_rank']} of {ex['n']}; the candidates "
           f"inside a highlight have a median rank of {ex['median_rank_in_highlight']:.0f}, "
           f"the others {ex['median_rank_other']:.0f}.", ""]
  return lines


def write_report(workdir: str, runs: dict[str, dict], world_summary: str | None = None,
                 timings: dict[str, float] | None = None,
                 collisions: dict[str, dict] | None = None,
                 example: dict | None = None, realtime: dict | None = None,
                 reference: dict | None = None) -> str:
  """Writes ``workdir/report.md`` and its plots; returns the report path. ``realtime``: the
  real-time loop's metrics.json (its own report in ``workdir/realtime/``); ``reference``:
  ``reference_rows``'s."""
  plots = os.path.join(workdir, "plots")
  os.makedirs(plots, exist_ok=True)
  lines = ["# mcjax run report", ""]
  if world_summary:
    lines += ["## The world", "", "```", world_summary.rstrip(), "```", ""]
  lines += ["## Online (prequential) metrics, all windows", "",
            "Each evaluation window is scored before the model trains on it. In parentheses: "
            "the base-rate logloss (predicting the records' positive rate for all); a logloss "
            "near or above it means the model is not calibrated.", "",
            metric_table(runs), "",
            "## Ranking_Score", "",
            "The score the scorer ranks candidates by, fusing the six task probabilities "
            f"({_fusion(runs)}), scored against the click and the long-view labels of the same "
            "evaluation records, beside the AUC of that task's own probability.", "",
            ranking_table(runs), "", "## CTR AUC per slice", "", slice_table(runs), ""]
  room = headroom_table(runs)
  if room:
    lines += ["## Headroom to the oracle (CTR AUC)", "", HEADROOM_TEXT, "", room, ""]
  if reference:
    lines += ["## What the log allows: the observable reference (CTR AUC)", "",
              REFERENCE_TEXT.format(late=reference["late"]), "", reference_table(reference), ""]
  p1 = plot_auc_over_time(runs, ("full", "no_moment"), os.path.join(plots, "auc_over_time.png"))
  if p1:
    lines += ["## Freshness: full vs no_moment over time", "",
              "![CTR AUC over time](plots/auc_over_time.png)", ""]
  p2 = plot_slices(runs, ("full", "no_cross"), ("live_sparse", "other"),
                   os.path.join(plots, "live_sparse.png"))
  if p2:
    lines += ["## Cross: live-sparse users vs the rest", "",
              "![CTR AUC live-sparse vs other](plots/live_sparse.png)", ""]
  if realtime:
    lines += realtime_section(realtime)
  if collisions:
    lines += ["## Hash collisions of the embedding tables", "",
              "Ids of the trained log hashed as training hashes them (64-bit ids folded on the "
              "host, then the per-feature salted hash): the share of distinct ids sharing a "
              "row with another id.", "", collision_table(collisions), ""]
  if example:
    lines += example_section(example)
  if timings:
    lines += ["## Wall time per stage", "",
              tabulate([[k, f"{v:.1f} s"] for k, v in timings.items()], ["stage", "time"],
                       tablefmt="github"), ""]
  path = os.path.join(workdir, "report.md")
  atomic_write(path, "\n".join(lines))
  return path


def realtime_section(out: dict) -> list[str]:
  """The real-time loop's numbers beside the batch runs (its report: realtime/report.md)."""
  r, ctr = out["realtime"], out["overall"]["ctr"]
  fresh = r["freshness"]["end_to_end_s"]
  return ["## The real-time loop (`tiny` model)", "",
          "The same world's events through the stream engine, a continuous trainer and a "
          "version served after every step, unpaced; every evaluation record scored at its "
          "exposure time by the version served then, before its own samples were trained "
          "(`launch.realtime`; [its report](realtime/report.md)).", "",
          tabulate([[f"{ctr['auc']:.4f}", f"{ctr['logloss']:.4f} ({ctr['base_logloss']:.4f})",
                     f"{r['trained_rows']:,}", f"{r['steps']:,}", f"{r['wall_s']:.0f} s",
                     f"{r['speed_factor']}x", f"{fresh.get('p50', float('nan')):.2f} s"]],
                   ["CTR AUC", "logloss (base rate's)", "samples", "steps", "loop time",
                    "real time", "freshness p50 (emitted -> served)"], tablefmt="github"), ""]


def write_run_report(workdir: str, runs: dict[str, dict], log_dir: str, model_cfg,
                     **kwargs) -> str:
  """``write_report`` of ``launch.run``: adds the trained log's hash-collision table
  (``model_cfg``'s tables) and the first run's scored example request inside a highlight in
  the last quarter of the evaluation windows."""
  from mcjax.model.collisions import collision_report  # pylint: disable=g-import-not-at-top
  from mcjax.serve.example import scored_example  # pylint: disable=g-import-not-at-top
  first, windows = next(iter(runs)), next(iter(runs.values()))["windows"]
  example = scored_example(os.path.join(workdir, first), log_dir,
                           after_ms=windows[3 * len(windows) // 4]["start_ms"]) if windows else None
  return write_report(workdir, runs, collisions=collision_report(log_dir, model_cfg),
                      example=example, reference=reference_rows(workdir, runs, log_dir),
                      **kwargs)


def load_metrics(path: str) -> dict:
  with open(path) as f:
    return json.load(f)
