"""RESULTS.md of the ablation study: seeds-aggregated tables, slices, oracle headroom,
freshness after highlight starts, the DeepCTR-Torch DIN peer, and PNG plots.

Input: for each seed, the run folders written by ``mcjax.trainer`` (``metrics.json`` and
``preds/window_*.npz``), the world (``_oracle/exposures.parquet``, ``highlights.parquet``) and
the evaluation split of the sample cache (live id and time of each evaluation record).
Spreads are sample standard deviations over seeds (ddof=1); a delta from `full` is computed per
seed (same world, same model seed) and then aggregated.
"""

from __future__ import annotations

import datetime
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from tabulate import tabulate  # noqa: E402

from mcjax import metrics, report  # noqa: E402
from mcjax.samples import shards  # noqa: E402

TASKS = ("ctr", "lvtr", "ltr")
STATS = ("auc", "uauc", "gauc", "logloss")
SLICES = ("highlight", "non_highlight", "live_sparse", "other")
PRE_MS = 5 * 60_000        # freshness: the live's predictions in the 5 min before the start
ROLL = 3                   # ... a rise is a mean of ROLL consecutive records above
RISE_SIGMAS = 2.0          # ... the pre-highlight mean + RISE_SIGMAS * its standard error
TABLE = {"tablefmt": "github", "disable_numparse": True}


def mean_std(xs) -> tuple[float, float]:
  x = np.asarray([v for v in xs if v is not None and np.isfinite(v)], np.float64)
  if not len(x):
    return float("nan"), float("nan")
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def fmt(ms: tuple[float, float], digits: int = 4, sign: bool = False) -> str:
  m, s = ms
  if not np.isfinite(m):
    return "-"
  head = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
  return head if not np.isfinite(s) else f"{head} ± {s:.{digits}f}"


def significance(ms: tuple[float, float]) -> str:
  m, s = ms
  if not np.isfinite(m) or not np.isfinite(s):
    return "n/a"
  return f"{abs(m) / s:.1f}σ" if s > 0 else "∞σ"


def load_preds(run_dir: str) -> dict:
  """All windows' evaluation predictions of one run, concatenated."""
  files = sorted(glob.glob(os.path.join(run_dir, "preds", "window_*.npz")))
  if not files:
    raise FileNotFoundError(f"no predictions in {run_dir}/preds")
  parts = [dict(np.load(f)) for f in files]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_meta(samples_dir: str, chunk: int = 50_000) -> dict:
  """exposure_id, live_id and exposure time of every evaluation record (sorted by id)."""
  src = shards.open_samples(samples_dir, "eval")
  cols = {"exposure_id": [], "live_id": [], "exposure_ts_ms": []}
  for lo in range(0, len(src), chunk):
    rec = src.__getitems__(np.arange(lo, min(lo + chunk, len(src))))
    for k in cols:
      cols[k].append(rec[k])
  out = {k: np.concatenate(v) for k, v in cols.items()}
  order = np.argsort(out["exposure_id"], kind="stable")
  return {k: v[order] for k, v in out.items()}


def join(keys: np.ndarray, table_keys: np.ndarray, values: np.ndarray, name: str):
  """values[table_keys == keys] for sorted table_keys; raises naming the table on a miss."""
  pos = np.clip(np.searchsorted(table_keys, keys), 0, len(table_keys) - 1)
  if len(keys) and not np.all(table_keys[pos] == keys):
    raise ValueError(f"{np.sum(table_keys[pos] != keys)} evaluation records have no row in "
                     f"{name} (joined by exposure_id)")
  return values[pos]


def oracle_ctr(world_dir: str, preds: dict) -> dict:
  """The oracle's p_click for the run's CTR evaluation records, and their labels."""
  ex = pq.read_table(os.path.join(world_dir, "_oracle", "exposures.parquet"),
                     columns=["exposure_id", "p_click"])
  ids = ex["exposure_id"].to_numpy()
  order = np.argsort(ids)
  p = join(preds["exposure_id"], ids[order], ex["p_click"].to_numpy()[order],
           "_oracle/exposures.parquet")
  keep = preds["mask"][:, 0] > 0
  return {"p": p[keep], "y": preds["labels"][keep, 0], "user": preds["user_id"][keep],
          "in_highlight": preds["in_highlight"][keep], "lv_len": preds["lv_len"][keep]}


def rise_delays(preds: dict, meta: dict, highlights) -> np.ndarray:
  """Seconds from each highlight's start until the live's predicted CTR rises (NaN: no rise
  before the highlight ends; highlights with < 3 earlier or < ROLL later records dropped).

  A rise: the mean prediction of ROLL consecutive evaluation records of the live exceeds the
  mean over its records in the PRE_MS before the start by RISE_SIGMAS standard errors."""
  live = join(preds["exposure_id"], meta["exposure_id"], meta["live_id"], "the eval split")
  ts = join(preds["exposure_id"], meta["exposure_id"], meta["exposure_ts_ms"], "the eval split")
  p = preds["probs"][:, 0].astype(np.float64)
  lives, live_rank = np.unique(live, return_inverse=True)
  t0 = int(ts.min()) - PRE_MS
  span = int(ts.max()) - t0 + 1
  key = live_rank.astype(np.int64) * span + (ts - t0)
  order = np.argsort(key, kind="stable")
  key, p, live_rank = key[order], p[order], live_rank[order]
  h_live = highlights["live_id"].to_numpy()
  h_rank = np.searchsorted(lives, h_live)
  known = (h_rank < len(lives)) & (lives[np.minimum(h_rank, len(lives) - 1)] == h_live)
  h_rank = h_rank[known]
  start = highlights["start_ms"].to_numpy()[known] - t0
  end = highlights["end_ms"].to_numpy()[known] - t0
  base = h_rank * span
  lo_pre = np.searchsorted(key, base + np.maximum(start - PRE_MS, 0))
  lo = np.searchsorted(key, base + start)
  hi = np.searchsorted(key, base + end)
  c1 = np.concatenate([[0.0], np.cumsum(p)])
  c2 = np.concatenate([[0.0], np.cumsum(p * p)])
  n_pre = lo - lo_pre
  ok = (n_pre >= 3) & (hi - lo >= ROLL)
  lo_pre, lo, hi, start = lo_pre[ok], lo[ok], hi[ok], start[ok]
  n_pre = n_pre[ok]
  mean = (c1[lo] - c1[lo_pre]) / n_pre
  var = np.maximum((c2[lo] - c2[lo_pre]) / n_pre - mean ** 2, 0.0) * n_pre / (n_pre - 1)
  thr = mean + RISE_SIGMAS * np.sqrt(var / ROLL)
  roll = (c1[ROLL:] - c1[:-ROLL]) / ROLL            # roll[i]: mean of p[i : i + ROLL]
  counts = hi - lo - ROLL + 1
  h_of = np.repeat(np.arange(len(lo)), counts)
  idx = lo[h_of] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  hit = roll[idx] > thr[h_of]
  out = np.full(len(lo), np.nan)
  first_h, first_at = np.unique(h_of[hit], return_index=True)
  last = idx[hit][first_at] + ROLL - 1
  out[first_h] = (key[last] - h_rank[ok][first_h] * span - start[first_h]) / 1000.0
  return out


def collect(plan: dict, runs: dict) -> dict:
  """Per config and seed: metrics.json, headroom inputs and freshness delays."""
  out = {"metrics": {}, "oracle": {}, "fresh": {}, "peer": {}}
  for seed, dirs in runs.items():
    world_dir = dirs["world"]
    highlights = pq.read_table(os.path.join(world_dir, "_oracle", "highlights.parquet"))
    meta = eval_meta(dirs["samples"])
    for name in plan["configs"]:
      m = report.load_metrics(os.path.join(dirs[name], "metrics.json"))
      out["metrics"].setdefault(name, {})[seed] = m
      preds = load_preds(dirs[name])
      if name == "full":
        o = oracle_ctr(world_dir, preds)
        sl = metrics.standard_slices(o, plan.get("live_sparse_threshold", 5))
        out["oracle"][seed] = {"overall": metrics.auc(o["y"], o["p"]), **{
            s: metrics.auc(o["y"][sel], o["p"][sel]) for s, sel in sl.items()}}
      if name in ("full", "no_moment", "no_crowd", "baseline"):
        out["fresh"].setdefault(name, {})[seed] = rise_delays(preds, meta, highlights)
    if "din" in dirs:
      preds = dict(np.load(os.path.join(dirs["din"], "preds.npz")))
      sl = metrics.standard_slices(preds, plan.get("live_sparse_threshold", 5))
      ev = metrics.evaluate(preds["probs"], preds["labels"], preds["mask"], preds["user_id"],
                            slices=sl, tasks=("ctr",))
      with open(os.path.join(dirs["din"], "done.json")) as f:
        ev["info"] = json.load(f)
      out["peer"][seed] = ev
  return out


def stat(c: dict, name: str, task: str, key: str, slice_: str | None = None) -> dict:
  """seed -> value of one metric of one config (None when undefined)."""
  res = {}
  for seed, m in c["metrics"].get(name, {}).items():
    node = m["overall"] if slice_ is None else m.get("slices", {}).get(slice_, {})
    res[seed] = node.get(task, {}).get(key)
  return res


def paired(a: dict, b: dict) -> list:
  return [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]


def task_table(c: dict, names, task: str) -> str:
  full_auc, full_gauc = stat(c, "full", task, "auc"), stat(c, "full", task, "gauc")
  rows = []
  for n in names:
    row = [n] + [fmt(mean_std(stat(c, n, task, k).values())) for k in STATS]
    d_auc = mean_std(paired(stat(c, n, task, "auc"), full_auc))
    d_gauc = mean_std(paired(stat(c, n, task, "gauc"), full_gauc))
    row += [fmt(d_auc, sign=True), significance(d_auc), fmt(d_gauc, sign=True)]
    rows.append(row)
  return tabulate(rows, ["config", "AUC", "UAUC", "GAUC", "logloss", "ΔAUC vs full",
                         "|Δ|/std", "ΔGAUC vs full"], **TABLE)


def slice_table(c: dict, names) -> str:
  rows = []
  for n in names:
    row = [n]
    for s in SLICES:
      v = stat(c, n, "ctr", "auc", s)
      d = mean_std(paired(v, stat(c, "full", "ctr", "auc", s)))
      row.append(f"{fmt(mean_std(v.values()))} ({fmt(d, sign=True)})")
    rows.append(row)
  return tabulate(rows, ["config"] + [f"{s} AUC (Δ vs full)" for s in SLICES],
                  **TABLE)


def gap(c: dict, other: str, a: str, b: str) -> tuple[float, float]:
  """(full - other) on slice a minus (full - other) on slice b, paired by seed."""
  da = paired(stat(c, "full", "ctr", "auc", a), stat(c, other, "ctr", "auc", a))
  db = paired(stat(c, "full", "ctr", "auc", b), stat(c, other, "ctr", "auc", b))
  return mean_std([x - y for x, y in zip(da, db)])


def expectations(c: dict) -> list[list[str]]:
  have = c["metrics"]
  rows = []
  def check(text, ms):
    m, s = ms
    met = np.isfinite(m) and m > 0 and (np.isfinite(s) and m > 2 * s)
    sign = "yes" if np.isfinite(m) and m > 0 else "no"
    rows.append([text, fmt(ms, sign=True), significance(ms), sign,
                 "met" if met else "not met"])
  if "no_moment" in have:
    check("full - no_moment, CTR AUC", mean_std(paired(stat(c, "full", "ctr", "auc"),
                                                       stat(c, "no_moment", "ctr", "auc"))))
    check("(full - no_moment) highlight - non-highlight",
          gap(c, "no_moment", "highlight", "non_highlight"))
  if "no_cross" in have:
    check("(full - no_cross) live-sparse - other", gap(c, "no_cross", "live_sparse", "other"))
  if "no_first_only" in have:
    check("full - no_first_only, CTR AUC",
          mean_std(paired(stat(c, "full", "ctr", "auc"), stat(c, "no_first_only", "ctr", "auc"))))
  return rows


def headroom_table(c: dict, names) -> str:
  oracle = {s: o["overall"] for s, o in c["oracle"].items()}
  base = stat(c, "baseline", "ctr", "auc")
  rows = [["oracle (p_click)", fmt(mean_std(oracle.values())),
           fmt(mean_std(c["oracle"][s]["highlight"] for s in oracle
                        if "highlight" in c["oracle"][s])), "1.00"]]
  for n in names:
    auc = stat(c, n, "ctr", "auc")
    shares = [(auc[s] - base[s]) / (oracle[s] - base[s]) for s in auc
              if s in base and s in oracle and auc[s] is not None and base[s] is not None]
    rows.append([n, fmt(mean_std(auc.values())),
                 fmt(mean_std(stat(c, n, "ctr", "auc", "highlight").values())),
                 fmt(mean_std(shares), 2) if base else "- (no baseline run)"])
  return tabulate(rows, ["scorer", "CTR AUC", "CTR AUC in highlights",
                         "headroom share"], **TABLE)


def freshness_table(c: dict) -> str:
  rows = []
  for n, per_seed in c["fresh"].items():
    d = np.concatenate(list(per_seed.values()))
    finite = d[np.isfinite(d)]
    med_seed = [np.median(np.where(np.isfinite(v), v, np.inf)) for v in per_seed.values()]
    rows.append([n, len(d), f"{len(finite) / max(len(d), 1):.2f}",
                 f"{np.median(finite):.0f}" if len(finite) else "-",
                 " / ".join("none" if not np.isfinite(x) else f"{x:.0f}" for x in med_seed)])
  return tabulate(rows, ["config", "highlights", "share with a rise",
                         "median s to rise (rises only)",
                         "median s per seed (no rise = ∞)"], **TABLE)


def peer_table(c: dict) -> str:
  rows = []
  def row(name, per_seed):
    rows.append([name] + [fmt(mean_std(v.get(k) for v in per_seed))
                          for k in ("auc", "gauc", "uauc", "logloss")])
  for n in ("full", "no_cross", "baseline"):
    if n in c["metrics"]:
      row(f"mcjax {n}", [m["overall"]["ctr"] for m in c["metrics"][n].values()])
  row("DeepCTR-Torch DIN", [p["overall"]["ctr"] for p in c["peer"].values()])
  return tabulate(rows, ["model", "CTR AUC", "GAUC", "UAUC", "logloss"], **TABLE)


def plot_slices(c: dict, names, path: str) -> None:
  fig, ax = plt.subplots(figsize=(9, 4))
  width = 0.8 / len(names)
  for i, n in enumerate(names):
    ms = [mean_std(stat(c, n, "ctr", "auc", s).values()) for s in SLICES]
    ax.bar(np.arange(len(SLICES)) + i * width, [m for m, _ in ms], width,
           yerr=[0 if not np.isfinite(s) else s for _, s in ms], label=n, capsize=2)
  vals = [m for n in names for s in SLICES
          for m in [mean_std(stat(c, n, "ctr", "auc", s).values())[0]] if np.isfinite(m)]
  if vals:
    ax.set_ylim(min(vals) - 0.03, max(vals) + 0.02)
  ax.set_xticks(np.arange(len(SLICES)) + width * (len(names) - 1) / 2, SLICES)
  ax.set_ylabel("CTR AUC (mean ± std over seeds)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_freshness(c: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  bins = np.linspace(0, 360, 25)
  for n, per_seed in c["fresh"].items():
    d = np.concatenate(list(per_seed.values()))
    ax.hist(d[np.isfinite(d)], bins=bins, histtype="step", lw=1.5,
            label=f"{n} ({np.isfinite(d).mean():.0%} of highlights rise)")
  ax.set_xlabel("seconds after the highlight starts until the live's predicted CTR rises")
  ax.set_ylabel("highlights")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_results(out: str, *, command: str, plan: dict, runs: dict, timings: dict) -> str:
  """Writes ``out`` (Markdown) and ``plots/*.png`` beside it; returns ``out``."""
  c = collect(plan, runs)
  names = list(plan["configs"])
  plots = os.path.join(os.path.dirname(os.path.abspath(out)), "plots")
  os.makedirs(plots, exist_ok=True)
  seed0 = min(runs)
  with open(os.path.join(runs[seed0]["world"], "meta.json")) as f:
    sizes = json.load(f)["sizes"]
  n_seeds = len(runs)
  lines = [
      "# Ablation study: Moment & Cross on the simulated world", "",
      "Produced by (from the repository root):", "", "```", command, "```", "",
      f"Finished {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in "
      f"{timings.get('total', 0) / 60:.1f} min. {n_seeds} seed(s) (world seed = model seed = "
      f"0..{n_seeds - 1}); online (prequential) evaluation: each window is scored before the "
      "model trains on it. Spreads are std over seeds (ddof=1); deltas are paired by seed.", "",
      f"World: preset `{plan['preset']}`" + (f" with overrides {plan['sizes']}"
                                             if plan["sizes"] else "")
      + f"; seed 0 has {sizes}.", "",
      f"Config overrides for every config: {plan['set'] or 'none'}.", "",
      "## Expectations (issue 6)", "",
      tabulate(expectations(c), ["difference", "mean ± std", "|mean|/std", "positive",
                                 "> 2 std"], **TABLE), ""]
  for task in TASKS:
    lines += [f"## {task.upper()}", "", task_table(c, names, task), ""]
  report.plot_auc_over_time({n: c["metrics"][n][seed0] for n in ("full", "no_moment")
                             if n in c["metrics"]}, ("full", "no_moment"),
                            os.path.join(plots, "auc_over_time.png"))
  plot_slices(c, names, os.path.join(plots, "slices.png"))
  lines += ["## Slices (CTR AUC; in parentheses: Δ vs full, paired by seed)", "",
            "`highlight`: exposures inside an oracle highlight moment; `live_sparse`: users with "
            f"fewer than {plan.get('live_sparse_threshold', 5)} live exposures in their history "
            "at exposure time.", "", slice_table(c, names), "",
            "![CTR AUC per slice](plots/slices.png)", "",
            f"![CTR AUC over time, seed {seed0}](plots/auc_over_time.png)", ""]
  if c["oracle"]:
    lines += ["## Oracle headroom (CTR)", "",
              "The oracle scores each evaluation record with the simulator's true click "
              "probability (`_oracle/exposures.parquet`, joined by exposure_id). Headroom share "
              "= (model AUC - baseline AUC) / (oracle AUC - baseline AUC) per seed, baseline = "
              "`baseline` (no_moment + no_cross).", "", headroom_table(c, names), ""]
  if c["fresh"]:
    plot_freshness(c, os.path.join(plots, "freshness.png"))
    lines += ["## Freshness after a highlight starts", "",
              f"Per highlight: the mean predicted CTR of the live's evaluation records in the "
              f"{PRE_MS // 60000} min before its start; the rise is the first time {ROLL} "
              f"consecutive records of the live average more than that mean + {RISE_SIGMAS:g} "
              "standard errors, before the highlight ends (no rise otherwise). Highlights with "
              f"fewer than 3 records before or {ROLL} during are left out.", "",
              freshness_table(c), "", "![Freshness](plots/freshness.png)", ""]
  if c["peer"]:
    info = next(iter(c["peer"].values()))["info"]
    lines += ["## Peer: DeepCTR-Torch DIN on the same samples and windows", "",
              f"Versions: {info.get('versions')}. Command (per seed): `{info.get('command')}`.",
              "", info.get("description", ""), "", peer_table(c), ""]
  lines += ["## Wall time", "", tabulate([[k, f"{v:.0f} s"] for k, v in timings.items()],
                                         ["stage", "time"], **TABLE), ""]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(out + ".tmp", out)
  print("\n".join(lines))
  return out
