"""RESULTS.md of the ablation study: seeds-aggregated tables, slices, oracle headroom,
freshness after highlight starts, the DeepCTR-Torch DIN peer, and PNG plots.

Input: for each seed, the run folders written by ``mcjax.train.loop`` (``metrics.json`` and
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

from mcjax import highlight_freshness as fresh  # noqa: E402
from mcjax import metrics, report  # noqa: E402
from mcjax.eventlog.files import atomic_write  # noqa: E402
from experiments import blocks  # noqa: E402
from mcjax.contract import schema as S  # noqa: E402
from mcjax.samples import shards  # noqa: E402

TASKS = ("ctr", "lvtr", "ltr")
STATS = ("auc", "uauc", "gauc", "logloss")
SLICES = ("highlight", "non_highlight", "live_sparse", "other")
FRESH = ("full", "no_moment", "no_crowd", "baseline")  # scorers of the freshness section
PLACEBO = "full, placebo (15 min before each highlight)"
CALIBRATION_MARGIN = 0.05  # a logloss more than 5% above the base rate's is flagged
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
  """exposure_id, live_id, exposure time, crowd features and oracle fields of every
  evaluation record (sorted by exposure_id)."""
  src = shards.open_samples(samples_dir, "eval")
  cols = {"exposure_id": [], "live_id": [], "exposure_ts_ms": [], "crowd": [],
          "in_highlight": [], "oracle_p_click": [], "oracle_p_no_highlight": []}
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


def oracle_p(world_dir: str, exposure_id: np.ndarray) -> np.ndarray:
  """The simulator's true click probability of each exposure (``_oracle/exposures``)."""
  ex = pq.read_table(os.path.join(world_dir, "_oracle", "exposures.parquet"),
                     columns=["exposure_id", "p_click"])
  ids = ex["exposure_id"].to_numpy()
  order = np.argsort(ids)
  return join(exposure_id, ids[order], ex["p_click"].to_numpy()[order],
              "_oracle/exposures.parquet")


def oracle_ctr(world_dir: str, preds: dict) -> dict:
  """The oracle's p_click for the run's CTR evaluation records, and their labels."""
  p = oracle_p(world_dir, preds["exposure_id"])
  keep = preds["mask"][:, 0] > 0
  return {"p": p[keep], "y": preds["labels"][keep, 0], "user": preds["user_id"][keep],
          "in_highlight": preds["in_highlight"][keep], "lv_len": preds["lv_len"][keep]}


def crowd_signal(meta: dict) -> dict:
  """How visible highlights are in the crowd features the model gets at exposure time."""
  hl = meta["in_highlight"]
  known = hl >= 0
  crowd, hl = meta["crowd"][known], hl[known]
  col = {n: crowd[:, S.CROWD_INDEX[n]] for n in ("exposures_30s", "exposures_5m",
                                                  "click_rate_30s", "click_rate_5m")}
  p, p0 = meta["oracle_p_click"][known], meta["oracle_p_no_highlight"][known]
  with np.errstate(divide="ignore", invalid="ignore"):
    lift = np.log(p / (1 - p)) - np.log(p0 / (1 - p0))
  return {"records": int(len(hl)), "highlight share": float(np.mean(hl == 1)),
          "true logit lift in highlights": float(np.nanmean(lift[hl == 1])),
          "share with >= 1 exposure of the live in the last 30 s":
              float(np.mean(col["exposures_30s"] > 0)),
          "mean exposures of the live in the last 5 min": float(np.mean(col["exposures_5m"])),
          "AUC of click_rate_30s for in_highlight": metrics.auc(hl, col["click_rate_30s"]),
          "AUC of click_rate_5m for in_highlight": metrics.auc(hl, col["click_rate_5m"])}


def collect(plan: dict, runs: dict) -> dict:
  """Per config and seed: metrics.json, headroom inputs and freshness delays."""
  out = {"metrics": {}, "oracle": {}, "delays": {}, "curves": {}, "peer": {}, "crowd": {}}
  for seed, dirs in runs.items():
    world_dir = dirs["world"]
    highlights = pq.read_table(os.path.join(world_dir, "_oracle", "highlights.parquet"))
    meta = eval_meta(dirs["samples"])
    out["crowd"][seed] = crowd_signal(meta)
    for name in plan["configs"]:
      if name not in dirs:  # --report_only: this seed's run did not finish
        continue
      m = report.load_metrics(os.path.join(dirs[name], "metrics.json"))
      out["metrics"].setdefault(name, {})[seed] = m
      preds = load_preds(dirs[name])
      if name == "full":
        o = oracle_ctr(world_dir, preds)
        sl = metrics.standard_slices(o, plan.get("live_sparse_threshold", 5))
        out["oracle"][seed] = {"overall": metrics.auc(o["y"], o["p"]), **{
            s: metrics.auc(o["y"][sel], o["p"][sel]) for s, sel in sl.items()}}
      if name not in FRESH:
        continue
      ix = fresh.live_index(
          join(preds["exposure_id"], meta["exposure_id"], meta["live_id"], "the eval split"),
          join(preds["exposure_id"], meta["exposure_id"], meta["exposure_ts_ms"],
               "the eval split"))
      p = preds["probs"][:, 0]
      out["delays"].setdefault(name, []).append(fresh.rise_delays(p, ix, highlights))
      out["curves"][name] = fresh.add_curves(out["curves"].get(name),
                                             fresh.uplift_curve(p, ix, highlights))
      if name == "full":
        out["delays"].setdefault(PLACEBO, []).append(
            fresh.rise_delays(p, ix, highlights, -fresh.PLACEBO_MS))
        p_true = oracle_p(world_dir, preds["exposure_id"])
        out["curves"][fresh.ORACLE] = fresh.add_curves(out["curves"].get(fresh.ORACLE),
                                                       fresh.uplift_curve(p_true, ix,
                                                                          highlights))
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
    row = [n, len(c["metrics"].get(n, {}))]
    row += [fmt(mean_std(stat(c, n, task, k).values())) for k in STATS]
    d_auc = mean_std(paired(stat(c, n, task, "auc"), full_auc))
    d_gauc = mean_std(paired(stat(c, n, task, "gauc"), full_gauc))
    row += (["-", "-", "-"] if n == "full" else
            [fmt(d_auc, sign=True), significance(d_auc), fmt(d_gauc, sign=True)])
    rows.append(row)
  return tabulate(rows, ["config", "seeds", "AUC", "UAUC", "GAUC", "logloss", "ΔAUC vs full",
                         "|Δ|/std", "ΔGAUC vs full"], **TABLE)


def slice_table(c: dict, names) -> str:
  rows = []
  for n in names:
    row = [n]
    for s in SLICES:
      v = stat(c, n, "ctr", "auc", s)
      d = mean_std(paired(v, stat(c, "full", "ctr", "auc", s)))
      row.append(fmt(mean_std(v.values())) + ("" if n == "full" else
                                               f" ({fmt(d, sign=True)})"))
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
  for other, part in (("no_moment", "the 30 s sample stream"),
                      ("no_crowd", "the real-time crowd features")):
    if other in have:
      check(f"full - {other} ({part}), CTR AUC",
            mean_std(paired(stat(c, "full", "ctr", "auc"), stat(c, other, "ctr", "auc"))))
      check(f"(full - {other}) highlight - non-highlight",
            gap(c, other, "highlight", "non_highlight"))
  if "no_cross" in have:
    check("(full - no_cross) live-sparse - other", gap(c, "no_cross", "live_sparse", "other"))
  if "no_first_only" in have:
    check("full - no_first_only, CTR AUC",
          mean_std(paired(stat(c, "full", "ctr", "auc"), stat(c, "no_first_only", "ctr", "auc"))))
  return rows


def base_logloss(c: dict, name: str, task: str) -> dict:
  """seed -> the base-rate logloss of the config's evaluation records (from n and pos)."""
  n, pos = stat(c, name, task, "n"), stat(c, name, task, "pos")
  return {s: metrics.base_rate_logloss(pos[s], n[s]) for s in n
          if n[s] is not None and pos[s] is not None}


def calibration_table(c: dict, names) -> tuple[str, list[str]]:
  """Logloss against the base-rate logloss per config and task, and the configs/tasks whose
  logloss exceeds it by more than CALIBRATION_MARGIN (relative) in some seed."""
  rows, bad = [], []
  for n in names:
    row = [n]
    for task in TASKS:
      ll, base = stat(c, n, task, "logloss"), base_logloss(c, n, task)
      ratio = {s: ll[s] / base[s] for s in ll if ll[s] is not None and base.get(s)}
      row += [fmt(mean_std(ll.values())), fmt(mean_std(base.values())),
              fmt(mean_std(ratio.values()), digits=3)]
      if any(r > 1 + CALIBRATION_MARGIN for r in ratio.values()):
        bad.append(f"{n} {task}")
    rows.append(row)
  head = ["config"] + [f"{t.upper()} {k}" for t in TASKS
                       for k in ("logloss", "base-rate logloss", "ratio")]
  return tabulate(rows, head, **TABLE), bad


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


def decomposition_table(c: dict, names) -> str | None:
  """Per config and slice, mean ± std over seeds of metrics.json's ``headroom`` block: the
  model's CTR AUC, the oracle's, the oracle without its affinity / highlight term, and the
  share of each true logit term the model carries (``metrics.headroom``)."""
  rows = []
  for n in names:
    per_seed = [m.get("headroom", {}) for m in c["metrics"].get(n, {}).values()]
    for sl in dict.fromkeys(k for h in per_seed for k in h):
      hs = [h[sl] for h in per_seed if sl in h]
      col = lambda key: fmt(mean_std(h[key] for h in hs))
      rows.append([n, sl, col("auc"), col("oracle_auc"), col("oracle_no_affinity_auc"),
                   col("oracle_no_highlight_auc"),
                   fmt(mean_std(h["oracle_auc"] - h["auc"] for h in hs
                                if h["auc"] is not None and h["oracle_auc"] is not None))]
                  + [fmt(mean_std(h["learned"][k] for h in hs), 2)
                     for k in ("rest", "affinity", "highlight")])
  if not rows:
    return None
  return tabulate(rows, ["config", "slice", "model", "oracle", "oracle, no affinity",
                         "oracle, no highlight", "gap", "learned base", "learned affinity",
                         "learned highlight"], **TABLE)


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


def write_results(out: str, *, command: str, plan: dict, runs: dict, timings: dict) -> str:
  """Writes ``out`` (Markdown) and ``plots/*.png`` beside it; returns ``out``."""
  c = collect(plan, runs)
  names = [n for n in plan["configs"] if n in c["metrics"]]
  plots = os.path.join(os.path.dirname(os.path.abspath(out)), "plots")
  os.makedirs(plots, exist_ok=True)
  seed0 = min(runs)
  with open(os.path.join(runs[seed0]["world"], "meta.json")) as f:
    sizes = json.load(f)["sizes"]
  n_seeds = len(runs)
  lines = [
      "# Ablation study: Moment & Cross on the simulated world", "",
      "Produced by (from the repository root):", "", "```", command, "```", "",
      f"Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
      f"{n_seeds} seed(s) (world seed = model seed = "
      f"0..{n_seeds - 1}); online (prequential) evaluation: each window is scored before the "
      "model trains on it. Spreads are std over seeds (ddof=1); deltas are paired by seed.", "",
      f"World: preset `{plan['preset']}`" + (f" with overrides {plan['sizes']}"
                                             if plan["sizes"] else "")
      + f"; seed 0 has {sizes}.", "",
      f"Config overrides for every config: {plan['overrides'] or 'none'}.", "",
      "## Expectations", "",
      tabulate(expectations(c), ["difference", "mean ± std", "|mean|/std", "positive",
                                 "> 2 std"], **TABLE), ""]
  for task in TASKS:
    lines += [f"## {task.upper()}", "", task_table(c, names, task), ""]
  calib, bad = calibration_table(c, names)
  lines += ["## Calibration", "",
            "Evaluation logloss against the base-rate logloss (predicting the evaluation "
            "records' own positive rate for every record; mean ± std over seeds) and their "
            "ratio. A model fed inputs it never trained on shows here before its AUC does. "
            + (f"Above the base rate by more than {CALIBRATION_MARGIN:.0%} in some seed: "
               f"{', '.join(bad)}." if bad else
               f"No config is above its base rate by more than {CALIBRATION_MARGIN:.0%} in "
               "any seed."), "", calib, ""]
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
              "`baseline` (on_close samples, no crowd features, no Cross).", "",
              headroom_table(c, names), ""]
  decomposition = decomposition_table(c, names)
  if decomposition:
    lines += ["### Where the gap is (CTR AUC per slice)", "", report.HEADROOM_TEXT, "",
              decomposition, ""]
  if c["curves"]:
    fresh.plot(c["delays"], c["curves"], os.path.join(plots, "freshness.png"))
    lines += ["## Freshness after a highlight starts", "",
              f"Per highlight: the mean predicted CTR of the live's evaluation records in the "
              f"{fresh.PRE_MS // 60000} min before its start; the rise is the first time "
              f"{fresh.ROLL} consecutive records of the live average more than that mean + "
              f"{fresh.RISE_SIGMAS:g} standard errors, before the highlight ends (no rise "
              f"otherwise); highlights with fewer than 3 records before or {fresh.ROLL} during "
              "are left out. The placebo row applies the same rule to `full` 15 min before "
              "each highlight: how often the rule fires with no highlight. Pooled: the mean "
              "logit uplift of the live's predictions over its pre-start mean, per 30 s bin "
              "over all highlights and seeds; the oracle row is the true p_click; the pooled "
              "rise is the end of the first bin after the start where a model's uplift reaches "
              "half the oracle's mean uplift over 0-2 min.", "",
              fresh.table(c["delays"], c["curves"]), "", "![Freshness](plots/freshness.png)",
              "", "How visible a highlight is in the crowd features at exposure time "
              "(evaluation records, mean over seeds; the click rates are the only real-time "
              "signal of a highlight the model has):", "",
              tabulate([[k, f"{np.mean([v[k] for v in c['crowd'].values()]):.4g}"]
                        for k in next(iter(c["crowd"].values()))], ["", "value"], **TABLE), ""]
  if c["peer"]:
    info = next(iter(c["peer"].values()))["info"]
    lines += ["## Peer: DeepCTR-Torch DIN on the same samples and windows", "",
              f"Versions: {info.get('versions')}. Command (per seed): `{info.get('command')}`.",
              "", info.get("description", ""), "", peer_table(c), ""]
  lines += ["## Wall time", "", tabulate([[k, f"{v:.0f} s"] for k, v in timings.items()],
                                         ["stage", "time"], **TABLE), ""]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  kept = blocks.carry_from(out)  # what other programs wrote into the report (the levers)
  atomic_write(out, "\n".join(lines) + ("\n" + kept if kept else ""))
  print("\n".join(lines))
  return out
