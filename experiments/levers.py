"""The lever study: `full` with one config change at a time, chosen on validation, tested once.

    python -m experiments.levers --worlds=default,m3like --seeds=3 \
        --levers=base,hist256,affinity --workdir=runs/levers_tvt \
        --out=experiments/levers/RESULTS.md [--bench]

Every run is ``full`` as it was before the study (``mcjax.config.BEFORE_LEVERS``; the levers
it kept, ``CURRENT``, are ``full``'s defaults now) in ``train.mode=offline_tvt`` (train on the
first 70% of the logged day, validate on the next 10%, test on the last 20%;
``mcjax.train.plan``) with the lever's overrides (``LEVERS``), on world ``WORLD`` seed s with
model seed s, s = first_seed..first_seed+N-1 (``--first_seed`` replicates a choice on fresh
seeds); worlds and sample caches are shared by the levers of a seed, finished runs are
reused. A lever is
*kept* when its paired validation gain over ``base`` is positive on every world, by more
than its spread over seeds; the test numbers are read only for the table (no tuning on test).
Each row also has the test calibration (logloss against the base rate's) and the oracle's
headroom: gap = oracle CTR AUC - model CTR AUC on the test records, and the coefficient of
the true logit's affinity term in the model's logit (``mcjax.metrics`` headroom block).

``--bench``: the train step of every lever's model, side by side in this process
(``benchmarks.step_bench``, synthetic batches of the training batch size, median of
interleaved repeats), so the cost column is a ratio measured in one run.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import numpy as np
from absl import app, flags

from mcjax import config as mcconfig
from mcjax.contract import schema
from mcjax.model import config as model_config

TVT = {"train.mode": "offline_tvt"}
# The study's first choice (validation on seeds 0-2): the lever `combo_acc1e4`; the `tuned_*`
# levers are changes on top of it. Every lever's overrides below are of `full` as it was
# before the study (mcjax.config.BEFORE_LEVERS, the lever `base`), so the study reproduces
# whatever the defaults are (``overrides``).
_TUNED = {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash",
          "model.match_set": "affinity", "train.embedding_initial_accumulator": 1e-4}
TUNED_LEVER = "combo_acc1e4"
# The crowd features counted since the live's start, and its age (they grow with the audience
# of the evening hours the offline test reads).
_SINCE_START = model_config.SINCE_START
_COUNTS = schema.CROWD_COUNTS
# `full`'s defaults now: the first choice with the since-start crowd left out and the dense
# learning rate doubled, kept on fresh seeds 3-5 (experiments/levers/fresh_seeds.md).
CURRENT = "tuned_recent_x2"
_NOW = {**_TUNED, "model.crowd.drop": _SINCE_START, "train.learning_rate": 2e-3}  # its overrides

LEVERS = {
    "base": ("`full` before the study (`mcjax.config.BEFORE_LEVERS`)", {}),
    "hist256": ("short-video history 64 -> 256, two-stage search (`gsu.approx=simhash`)",
                {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash"}),
    "hist1000": ("short-video history 64 -> 1,000, two-stage search",
                 {"moment.sv_hist_len": 1000, "model.gsu.approx": "simhash"}),
    "affinity": ("user x author interaction features (`model.match_set=affinity`)",
                 {"model.match_set": "affinity"}),
    "emb_lr_x2": ("row-wise Adagrad learning rate 0.05 -> 0.1",
                  {"train.embedding_learning_rate": 0.1}),
    "emb_lr_half": ("row-wise Adagrad learning rate 0.05 -> 0.025",
                    {"train.embedding_learning_rate": 0.025}),
    "adagrad_acc": ("row-wise Adagrad's initial accumulator 0 -> 1e-6 (a rare row's first "
                    "updates scale with its gradient instead of lr * sign)",
                    {"train.embedding_initial_accumulator": 1e-6}),
    "adagrad_acc_1e5": ("row-wise Adagrad's initial accumulator 0 -> 1e-5",
                        {"train.embedding_initial_accumulator": 1e-5}),
    "adagrad_acc_1e4": ("row-wise Adagrad's initial accumulator 0 -> 1e-4",
                        {"train.embedding_initial_accumulator": 1e-4}),
    "init_small": ("embedding rows start at N(0, 0.01^2) instead of N(0, 0.05^2) (an id seen "
                   "rarely adds less random logit)", {"model.embedding.init_stddev": 0.01}),
    "dense_lr_x2": ("dense AdamW learning rate 1e-3 -> 2e-3", {"train.learning_rate": 2e-3}),
    "affinity_user": ("affinity features + the user's own like / follow / click shares and "
                      "mean engagement over each history (`model.match_set=affinity_user`)",
                      {"model.match_set": "affinity_user"}),
    "dcn": ("DCN-v2 cross network, 2 full-rank layers, before the towers "
            "(`model.towers.cross_layers=2`)", {"model.towers.cross_layers": 2}),
    "hist256_affinity": ("history 256 (simhash) + affinity features",
                         {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash",
                          "model.match_set": "affinity"}),
    "combo": ("history 256 (simhash) + affinity features + Adagrad accumulator 1e-5",
              {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash",
               "model.match_set": "affinity", "train.embedding_initial_accumulator": 1e-5}),
    "combo1000": ("history 1,000 (simhash) + affinity features + Adagrad accumulator 1e-5",
                  {"moment.sv_hist_len": 1000, "model.gsu.approx": "simhash",
                   "model.match_set": "affinity", "train.embedding_initial_accumulator": 1e-5}),
    "combo_user": ("history 256 (simhash) + affinity and user-rate features + Adagrad "
                   "accumulator 1e-5",
                   {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash",
                    "model.match_set": "affinity_user",
                    "train.embedding_initial_accumulator": 1e-5}),
    "combo_lv128": ("combo + live history 32 -> 128",
                    {"moment.sv_hist_len": 256, "model.gsu.approx": "simhash",
                     "model.match_set": "affinity", "train.embedding_initial_accumulator": 1e-5,
                     "moment.lv_hist_len": 128}),
    "combo_acc1e4": ("combo with Adagrad's initial accumulator 1e-4 (the first choice)",
                     _TUNED),
    "tuned_acc1e3": ("`combo_acc1e4` with Adagrad's initial accumulator 1e-3",
                     {**_TUNED, "train.embedding_initial_accumulator": 1e-3}),
    "tuned_nouser": ("`combo_acc1e4` without a user id row (`embedding.vocab.user=1`: every user "
                     "shares one row; the user is read from behaviour and side features)",
                     {**_TUNED, "model.embedding.vocab.user": 1}),
    "tuned_noitem": ("`combo_acc1e4` without item id rows (`embedding.vocab.sv_item=1`, "
                     "`live_item=1`: items are read by author, category and side fields)",
                     {**_TUNED, "model.embedding.vocab.sv_item": 1,
                      "model.embedding.vocab.live_item": 1}),
    "tuned1000": ("`combo_acc1e4` with a 1,000-play short-video history",
                  {**_TUNED, "moment.sv_hist_len": 1000}),
    "tuned_dense_x2": ("`combo_acc1e4` with the dense AdamW learning rate 1e-3 -> 2e-3",
                       {**_TUNED, "train.learning_rate": 2e-3}),
    "tuned_dense_x4": ("`combo_acc1e4` with the dense AdamW learning rate 1e-3 -> 4e-3",
                       {**_TUNED, "train.learning_rate": 4e-3}),
    "tuned_dense_x2_warmup": ("`combo_acc1e4` with the dense AdamW learning rate 2e-3 and a "
                              "50-step warm-up",
                              {**_TUNED, "train.learning_rate": 2e-3,
                               "train.warmup_steps": 50}),
    "tuned_dense_half": ("`combo_acc1e4` with the dense AdamW learning rate 1e-3 -> 5e-4",
                         {**_TUNED, "train.learning_rate": 5e-4}),
    "tuned_warmup": ("`combo_acc1e4` with a linear warm-up of the dense learning rate over the "
                     "first 50 steps (`train.warmup_steps`)",
                     {**_TUNED, "train.warmup_steps": 50}),
    "tuned_log": ("`combo_acc1e4` with the log shares beside the affinity features "
                  "(`model.match_set=affinity_log`)",
                  {**_TUNED, "model.match_set": "affinity_log"}),
    "tuned_crowd_deep": ("`combo_acc1e4` with a two-layer crowd MLP (`model.crowd.hidden=(128, "
                         "64)`; one layer of 64)",
                         {**_TUNED, "model.crowd.hidden": (128, 64)}),
    "tuned_crowd_recent": ("`combo_acc1e4` with the crowd encoder on the 30 s and 5 min "
                           "windows only (`model.crowd.drop`: the since-start counts and the "
                           "live's age, which grow with the evening's audience)",
                           {**_TUNED, "model.crowd.drop": _SINCE_START}),
    "tuned_recent_x2": ("`tuned_crowd_recent` with the dense AdamW learning rate 2e-3 (`full`'s "
                        "defaults since its replication on fresh seeds)",
                        _NOW),
    "tuned_recent_wide": ("`tuned_crowd_recent` with the wide crowd path",
                          {**_TUNED, "model.crowd.drop": _SINCE_START,
                           "model.crowd.wide": True}),
    "tuned_crowd_rates": ("`combo_acc1e4` with the crowd encoder on the last 30 s counts and the "
                          "30 s / 5 min click rates only",
                          {**_TUNED, "model.crowd.drop": _SINCE_START + tuple(
                              f"{c}_5m" for c in _COUNTS) + ("viewers_now",)}),
    "tuned_crowd_wide": ("`combo_acc1e4` with a wide path: the log1p crowd features linearly "
                         "to every task's logit beside the crowd MLP (`model.crowd.wide`)",
                         {**_TUNED, "model.crowd.wide": True}),
    "now_batch128": ("`full` (`tuned_recent_x2`) with training batch 256 -> 128 (twice the "
                     "updates over the same samples)", {**_NOW, "train.batch_size": 128}),
    "now_epochs2": ("`full` (`tuned_recent_x2`) with two passes over the training samples",
                    {**_NOW, "train.epochs": 2}),
    "now_batch64": ("`full` (`tuned_recent_x2`) with training batch 256 -> 64",
                    {**_NOW, "train.batch_size": 64}),
    "now_b128_epochs2": ("`full` (`tuned_recent_x2`) with training batch 128 and two passes",
                         {**_NOW, "train.batch_size": 128, "train.epochs": 2}),
    "hist1000_affinity": ("history 1,000 (simhash) + affinity features",
                          {"moment.sv_hist_len": 1000, "model.gsu.approx": "simhash",
                           "model.match_set": "affinity"}),
}



def define_flags() -> None:
  """The program's flags, defined when it runs (importing the module for its tables defines
  none, so it can share a process with other launchers, as in the tests)."""
  flags.DEFINE_list("worlds", ["default", "m3like"], "World presets.")
  flags.DEFINE_integer("seeds", 3, "Seeds first_seed..first_seed+N-1 (world seed = model "
                       "seed).")
  flags.DEFINE_integer("first_seed", 0, "The first seed (fresh seeds replicate a choice on "
                       "worlds and models the study has not seen).", lower_bound=0)
  flags.DEFINE_list("levers", ["base", "hist256", "affinity"],
                    f"Levers to run (base is always included): {sorted(LEVERS)}.")
  flags.DEFINE_string("workdir", "runs/levers_tvt", "Worlds, samples and runs.")
  flags.DEFINE_string("out", None, "Write the markdown report here.")
  flags.DEFINE_bool("bench", False, "Also time every lever's train step side by side.")
  flags.DEFINE_bool("report_only", False, "Train nothing: report the finished runs (a lever "
                    "missing a world's seeds is left out there).")
  flags.DEFINE_integer("bench_repeats", 7, "--bench: interleaved repeats.")
  flags.DEFINE_list("bench_levers", None, "--bench: time only these levers (and base); "
                    "default: every lever of --levers.")
  flags.DEFINE_string("summary_into", None, "Also write the summary and the observable-"
                      "reference tables as block 'levers' of this report (e.g. "
                      "experiments/RESULTS.md; experiments.ablation keeps the block when it "
                      "rewrites that file).")
  flags.DEFINE_string("summary_block", "levers", "--summary_into: the name of the block (one "
                      "per study: a second study of other seeds keeps the first's).")
  flags.DEFINE_list("reference_levers", ["combo_acc1e4"], "Levers shown beside base in the "
                    "observable-reference table.")
  flags.DEFINE_list("ensemble_levers", None, "Also report the test CTR AUC of the average "
                    "logit of these levers' runs beside each one's (models of the same world "
                    "and seed: how much of the gap is the variance of one model).")


def overrides(lever: str) -> dict:
  """The config overrides of ``lever``'s runs: ``BEFORE_LEVERS``, then the lever's own."""
  return {**mcconfig.BEFORE_LEVERS, **LEVERS[lever][1]}


def run_one(workdir: str, world: str, seed: int, lever: str) -> str:
  """Trains and scores one (world, seed, lever); returns its metrics.json (reused if there)."""
  from mcjax.sim import world as sim_world
  from mcjax.train import data, loop
  root = os.path.join(workdir, world, f"seed_{seed}")
  run_dir = os.path.join(root, lever)
  path = os.path.join(run_dir, "metrics.json")
  if os.path.exists(path):
    return path
  log_dir = os.path.join(root, "world")
  if not os.path.exists(log_dir):
    sim_world.build(log_dir, world, seed)
  cfg = mcconfig.load_config("full", {**TVT, **overrides(lever)})
  cfg.data.log_dir, cfg.seed = log_dir, seed
  t = time.time()
  samples = data.prepare(cfg, root, os.path.join(root, "samples"))
  m = loop.train_and_evaluate(cfg, run_dir, samples)
  print(f"{world} seed {seed} {lever}: valid CTR AUC {m['selected']['ctr']['auc']:.4f}, "
        f"test {m['overall']['ctr']['auc']:.4f} ({time.time() - t:.0f} s)", flush=True)
  return path


def held_out_records(run_dir: str) -> dict | None:
  """The arrays of a run's test records (its last scored window, the mask's CTR column kept);
  None when it has none."""
  path = os.path.join(run_dir, "preds", "window_00001.npz")
  if not os.path.exists(path):
    return None
  d = dict(np.load(path))
  keep = d["mask"][:, 0] > 0
  return {k: v[keep] for k, v in d.items()}


def headroom(run_dir: str) -> dict:
  """``mcjax.metrics.headroom`` of the test records' CTR (recomputed from the predictions, so
  runs written before a headroom field existed read the same)."""
  from mcjax import metrics
  d = held_out_records(run_dir)
  if d is None:
    return {}
  return metrics.headroom(d["probs"][:, 0], d["labels"][:, 0],
                          {k: d[k] for k in metrics.ORACLE_FIELDS}) or {}


def reference(workdir: str, world: str, seed: int) -> dict:
  """``mcjax.sim.reference`` of one world and seed, scored on the base run's test records and
  fitted on the live exposures of the first 70% of the log's span (the share the models train
  on); cached in ``reference.json`` beside the world. {} when the base run is missing."""
  from mcjax.sim import reference as ref
  root = os.path.join(workdir, world, f"seed_{seed}")
  cached = os.path.join(root, "reference.json")
  if os.path.exists(cached):
    with open(cached) as f:
      r = json.load(f)
    if r.get("version") == ref.VERSION:  # else an earlier reference's: computed again
      return r
  preds = os.path.join(root, "base", "preds", "window_00001.npz")
  if not os.path.exists(preds):
    return {}
  log_dir = os.path.join(root, "world")
  events = ref.load_events(log_dir)
  ts = ref.live_exposure_times(events)["ts_ms"]
  split = mcconfig.load_config("full", TVT).train.valid_split
  r = ref.reference(log_dir, int(ts.min() + split * (ts.max() - ts.min())),
                    np.load(preds)["exposure_id"], events=events)
  from mcjax.eventlog.files import atomic_write
  atomic_write(cached, json.dumps(r, indent=1))
  return r


def ctr_logits(run_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(exposure ids, CTR logits, CTR labels) of a run's test records, sorted by exposure id."""
  from mcjax.sim import metrics as sim_metrics
  d = held_out_records(run_dir)
  order = np.argsort(d["exposure_id"])
  return (d["exposure_id"][order], sim_metrics.logit(d["probs"][order, 0]),
          d["labels"][order, 0])


def ensemble(workdir: str, worlds, seeds, levers) -> dict:
  """(world, seed) -> {lever: test CTR AUC, "average": the AUC of the levers' mean logit}."""
  from mcjax import metrics
  out = {}
  for w in worlds:
    for s in seeds:
      runs = [ctr_logits(os.path.join(workdir, w, f"seed_{s}", n)) for n in levers]
      if any(not np.array_equal(r[0], runs[0][0]) for r in runs):
        raise ValueError(f"{w} seed {s}: the runs of {levers} scored different test records")
      y = runs[0][2]
      out[(w, s)] = {n: metrics.auc(y, r[1]) for n, r in zip(levers, runs)}
      out[(w, s)]["average"] = metrics.auc(y, np.mean([r[1] for r in runs], axis=0))
  return out


def ensemble_table(aucs: dict, levers) -> str:
  """Markdown: per world and seed, each lever's test CTR AUC, the best of them and the
  average-logit model's."""
  out = ["| world | seed | " + " | ".join(levers) + " | best single | average logit | "
         "average - best |", "|" + "---|" * (len(levers) + 5)]
  for (w, s), a in aucs.items():
    best = max(a[n] for n in levers)
    out.append(f"| {w} | {s} | " + " | ".join(f"{a[n]:.4f}" for n in levers)
               + f" | {best:.4f} | {a['average']:.4f} | {a['average'] - best:+.4f} |")
  return "\n".join(out)


ENSEMBLE_INTRO = """\
## One model's variance: the average of several

The test CTR AUC of the mean logit of the models named (each trained on the same world and
seed, with its own settings) beside each model's. An average of models removes what varies
between them (initialisation, batch order, the settings' own noise); what they share, the
information their features carry about the oracle's terms, it cannot add.
"""


def numbers(path: str) -> dict:
  """The row of one run: validation and test CTR, calibration and the oracle headroom."""
  with open(path) as f:
    m = json.load(f)
  v, t = m["selected"]["ctr"], m["overall"]["ctr"]
  h = headroom(os.path.dirname(path))
  return {"valid_auc": v["auc"], "valid_logloss": v["logloss"], "test_auc": t["auc"],
          "test_logloss": t["logloss"], "test_base": t["base_logloss"],
          "gap": h.get("oracle_auc", float("nan")) - t["auc"],
          "affinity": (h.get("learned") or {}).get("affinity"),
          "highlight": (h.get("learned") or {}).get("highlight"),
          "projected": h.get("projected_auc"), "residual_sd": h.get("residual_sd"),
          "step_s": m["train"].get("perf/step_time_s"), "wall_s": m["train"].get("wall_s")}


def mean_sd(xs) -> tuple[float, float]:
  x = np.asarray([v for v in xs if v is not None], np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def fmt(ms, digits=4, sign=False) -> str:
  m, s = ms
  head = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
  return head if not np.isfinite(s) else f"{head} ± {s:.{digits}f}"


def verdict(deltas: dict) -> str:
  """kept: the paired validation gain is positive on every world and above its spread."""
  ok = all(np.mean(d) > 0 and (len(d) < 2 or np.mean(d) > np.std(d, ddof=1))
           for d in deltas.values())
  return "kept" if ok else "dropped"


def parent_of(lever: str) -> str:
  """The run a lever is measured against: `full`'s defaults (``CURRENT``) for the `now_*`
  levers, the first choice (``TUNED_LEVER``) for the `tuned_*` levers (changes on top of it),
  `base` for the others."""
  if lever.startswith("now_"):
    return CURRENT
  return TUNED_LEVER if lever.startswith("tuned") else "base"


def lever_table(rows: dict, lever: str, worlds, seeds) -> tuple[str, str]:
  """(markdown table of ``lever`` against its parent on each world, verdict). ``seeds``: the
  seed numbers of ``rows``, as in every table below."""
  ref = parent_of(lever)
  head = ("| world | config | valid CTR AUC | Δ valid (paired) | test CTR AUC | Δ test (paired) "
          "| test logloss (base rate) | gap to oracle (test) | of it, residual noise "
          "| affinity carried | highlight carried |")
  out = [head, "|" + "---|" * 11]
  deltas, asked = {}, list(worlds)
  worlds = [w for w in worlds if all((w, s, lever) in rows and (w, s, ref) in rows
                                     for s in seeds)]
  for w in worlds:
    for name in (ref, lever) if lever != ref else (ref,):
      r = [rows[(w, s, name)] for s in seeds]
      b = [rows[(w, s, ref)] for s in seeds]
      dv = [x["valid_auc"] - y["valid_auc"] for x, y in zip(r, b)]
      dt = [x["test_auc"] - y["test_auc"] for x, y in zip(r, b)]
      if name != ref:
        deltas[w] = dv
      delta = (lambda d: fmt(mean_sd(d), sign=True) + " (" + ", ".join(f"{x:+.4f}" for x in d)
               + ")") if name != ref else (lambda d: "")
      out.append(f"| {w} | {name} | {fmt(mean_sd([x['valid_auc'] for x in r]))} | {delta(dv)} "
                 f"| {fmt(mean_sd([x['test_auc'] for x in r]))} | {delta(dt)} "
                 f"| {mean_sd([x['test_logloss'] for x in r])[0]:.4f} "
                 f"({mean_sd([x['test_base'] for x in r])[0]:.4f}) "
                 f"| {fmt(mean_sd([x['gap'] for x in r]))} "
                 f"| {fmt(mean_sd([x['projected'] - x['test_auc'] for x in r]))} "
                 f"| {fmt(mean_sd([x['affinity'] for x in r]), 2)} "
                 f"| {fmt(mean_sd([x['highlight'] for x in r]), 2)} |")
  v = verdict(deltas) if lever != ref and deltas else ""
  if v and len(deltas) < len(asked):
    v += f" ({', '.join(deltas)} only)"
  return "\n".join(out), v


def bench(levers, repeats: int) -> dict:
  """lever -> median train-step seconds per training example (the lever's own batch size, one
  device), interleaved repeats; levers of the same batch size compare as their step times."""
  import jax
  from benchmarks.step_bench import StepBench
  benches = {}
  for name in levers:
    cfg = mcconfig.load_config("full", overrides(name))
    benches[name] = StepBench(cfg, batch_size=int(cfg.train.batch_size), mesh_shape=(1, 1),
                              model_flops=False)
  times = {name: [] for name in levers}
  for r in range(repeats + 1):  # the first round warms up
    for name, b in benches.items():
      t = time.perf_counter()
      for i in range(10):
        jax.block_until_ready(b.step(b.batches[i % len(b.batches)]))
      if r:
        times[name].append((time.perf_counter() - t) / 10 / b.batch_size)
  return {name: float(np.median(t)) for name, t in times.items()}


INTRO = """\
Every run is `full` as it was before this study (`base`: `mcjax.config.BEFORE_LEVERS`, a
64-play short-video history, exact GSU, the match counts, Adagrad's accumulator 0, every crowd
feature, dense learning rate 1e-3) with one lever's config overrides, trained in
`train.mode=offline_tvt`: the first 70% of the logged day trains, the next 10% validates
(`valid`), the last 20% is the test (`test`), on worlds `default` and `m3like`
with world seed = model seed = {seeds}.
A lever is **kept** when its validation CTR AUC gain over `base` (paired by seed) is
positive on every world it ran on and larger than its standard deviation over seeds; the
test columns are read for this report only. `gap to oracle` = the world's true p(click) CTR
AUC minus the model's on the test records; `of it, residual noise` = the AUC of the model's
logit projected on the true logit's terms minus the model's AUC (`mcjax.metrics.headroom`):
the part of the gap that is logit variation unrelated to the truth rather than a term
carried at the wrong scale. `affinity carried` / `highlight carried`: the coefficient of the
true user-author affinity / highlight term in the model's logit (1 = its true scale). The
`tuned_*` levers are changes on top of the study's first choice (lever `combo_acc1e4`):
their deltas and verdicts are against it (column `vs`); the `now_*` levers are changes on
top of `full`'s defaults (`{current}`, kept on fresh seeds), against it; a share of the gap
is always of `base`'s gap.
Logloss is the test CTR logloss beside the base rate's (predicting the test records' positive
rate). Time per example: the train step divided by its batch (256 unless the lever sets
another) on one CPU device, median of interleaved repeats in one process (`--bench`).
"""


def summary(worlds, seeds, levers, rows: dict, steps: dict | None) -> str:
  """One line per lever: the paired validation and test gains per world, the verdict."""
  out = ["| lever | vs | " + " | ".join(f"{w}: Δ valid | {w}: Δ test (share of the gap)"
                                        for w in worlds)
         + " | verdict | time per example vs base |", "|" + "---|" * (2 * len(worlds) + 4)]
  for lever in levers[1:]:
    cells, ref = [], parent_of(lever)
    for w in worlds:
      have = all((w, s, lever) in rows and (w, s, ref) in rows and (w, s, "base") in rows
                 for s in seeds)
      for key in ("valid_auc", "test_auc"):
        d = [rows[(w, s, lever)][key] - rows[(w, s, ref)][key] for s in seeds] \
            if have else None
        cell = fmt(mean_sd(d), sign=True) if d else "not run"
        if d and key == "test_auc":
          gap = np.mean([rows[(w, s, "base")]["gap"] for s in seeds])
          cell += f" ({np.mean(d) / gap:.0%})"
        cells.append(cell)
    v = lever_table(rows, lever, worlds, seeds)[1]
    cost = f"{steps[lever] / steps['base']:.2f}x" if steps and lever in steps else "-"
    out.append(f"| {lever} | {ref} | " + " | ".join(cells) + f" | {v or '-'} | {cost} |")
  return "\n".join(out)


REFERENCE_INTRO = """\
## What the log allows: the observable reference

The oracle knows every user's hidden interests; a model sees one day of log before the query
time. `mcjax.sim.reference` measures, on each run's test records, a logistic regression on
causal, oracle-shaped features (`LR reference`: the hour, activity bucket, author, the live's
crowd in the last 30 s / 5 min, and the user's whole short-video history against the
candidate: plays and likes of the author and its category, their log shares) and the oracle
with its affinity term replaced by its least-squares estimate from those histories, its other
terms exact (`oracle, affinity estimated`; `R²` is that estimate's), and the oracle with its
highlight term estimated as well, by least squares on the live's crowd in the last 30 s and
5 min (`oracle, both estimated`; `R²`: the highlight estimate's), only the base term exact.
`half the gap` is the study's goal: base + (oracle - base) / 2. Shares are of base's gap to
the oracle.
"""


def reference_table(worlds, seeds, levers, rows: dict, refs: dict) -> str:
  """Per world: the oracle, the observable reference and the models' test CTR AUC."""
  out = ["| world | oracle | oracle, affinity estimated (R²) | oracle, both estimated (R²) "
         "| half the gap | LR reference | " + " | ".join(levers) + " |",
         "|" + "---|" * (6 + len(levers))]
  for w in worlds:
    r = [refs.get((w, s)) for s in seeds]
    b = [rows.get((w, s, "base")) for s in seeds]
    if not all(r) or not all(b):
      continue
    oracle = [x["oracle_auc"] for x in r]
    base = [x["test_auc"] for x in b]
    gap = np.mean(oracle) - np.mean(base)

    def cell(vals):
      m, sd = mean_sd(vals)
      return f"{fmt((m, sd))} ({(m - np.mean(base)) / gap:.0%})"

    cells = [fmt(mean_sd(oracle)),
             cell([x["oracle_affinity_estimated_auc"] for x in r])
             + f" R² {np.mean([x['affinity_r2'] for x in r]):.2f}",
             cell([x["oracle_estimated_auc"] for x in r])
             + f" R² {np.mean([x['highlight_r2'] for x in r]):.2f}",
             cell([(o + t) / 2 for o, t in zip(oracle, base)]),
             cell([x["lr_auc"] for x in r])]
    for lever in levers:
      have = all((w, s, lever) in rows for s in seeds)
      cells.append(cell([rows[(w, s, lever)]["test_auc"] for s in seeds])
                   if have else "not run")
    out.append(f"| {w} | " + " | ".join(cells) + " |")
  return "\n".join(out)


# What the study changed, for the summary block (the replication's report is
# experiments/levers/fresh_seeds.md; the side-by-side step time, benchmarks/RESULTS.md).
DEFAULTS_NOTE = (
    f"**`full`'s defaults are `{CURRENT}`** since it was kept on fresh seeds 3-5 (written "
    f"down before it ran: [levers/fresh_seeds.md](levers/fresh_seeds.md)); "
    f"`mcjax.config.BEFORE_LEVERS` restores the earlier ones (`base`). Its train step beside "
    f"the earlier `full`'s: benchmarks/RESULTS.md, \"`full`'s defaults: the train step before "
    f"and after the lever study\".")


def summary_block(command: str, worlds, seeds, levers, rows: dict, steps, refs: dict,
                  chosen, full_report: str | None) -> str:
  """The lever study in short, for another report: summary and observable-reference tables."""
  where = (f" One table per lever, with calibration and the oracle headroom of every row: "
           f"[{full_report}]({os.path.relpath(full_report, 'experiments')})."
           if full_report else "")
  return "\n".join([
      f"## Levers toward the oracle (`offline_tvt`, chosen on validation, tested once; seeds "
      f"{seeds[0]}-{seeds[-1]})", "",
      f"Written by `{command}`; `full` with one config change at a time, "
      f"{len(seeds)} seeds "
      f"(world seed = model seed), paired deltas of CTR AUC against the run in column `vs` "
      f"(`base`: `full` before this study; `combo_acc1e4`: its first choice; `full` now: "
      f"`{CURRENT}`)."
      + where, "", summary(worlds, seeds, levers, rows, steps), "", DEFAULTS_NOTE, "",
      REFERENCE_INTRO.replace("## What the log allows: the observable reference",
                              "### What the log allows: the observable reference"),
      reference_table(worlds, seeds, chosen, rows, refs), ""])


# A hand-written part of the report (its reading) goes below this line; --out keeps it.
KEEP_BELOW = "<!-- written by hand below: experiments.levers --out keeps what follows -->"


def report(command: str, worlds, seeds, levers, rows: dict, steps: dict | None,
           refs: dict | None = None, chosen=("base",)) -> str:
  parts = ["# Levers toward the oracle\n", f"Produced by (from the repository root):\n\n"
           f"```\n{command}\n```\n",
           INTRO.format(seeds=", ".join(str(x) for x in seeds), current=CURRENT) + "\n",
           summary(worlds, seeds, levers, rows, steps) + "\n"]
  if refs:
    parts.append(REFERENCE_INTRO + "\n" + reference_table(worlds, seeds, chosen, rows, refs)
                 + "\n")
  for lever in levers:
    table, v = lever_table(rows, lever, worlds, seeds)
    cost = ""
    if steps and lever in steps:
      cost = (f" Train step per example (the lever's batch size, one CPU device, median of "
              f"interleaved repeats): {steps[lever] * 1e6:.0f} µs vs base "
              f"{steps['base'] * 1e6:.0f} µs ({steps[lever] / steps['base']:.2f}x).")
    title = LEVERS[lever][0] + (f": **{v}**" if v else "")
    parts.append(f"### {lever}: {title}\n\n{table}\n{cost}\n")
  return "\n".join(parts)


def main(argv) -> None:
  F = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for flag in ("levers", "bench_levers", "reference_levers", "ensemble_levers"):
    unknown = [n for n in (F[flag].value or ()) if n not in LEVERS]
    if unknown:
      raise app.UsageError(f"--{flag}: unknown {unknown}; known: {sorted(LEVERS)}")
  if F.summary_into and not os.path.isfile(F.summary_into):
    raise app.UsageError(f"--summary_into={F.summary_into}: no such report to write the "
                         "block into (write the report first, e.g. with experiments.ablation)")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  levers = ["base"] + [n for n in F.levers if n != "base"]
  seeds = range(F.first_seed, F.first_seed + F.seeds)
  rows = {}
  for lever in levers:  # a lever at a time over every world and seed: base first
    for w in F.worlds:
      for s in seeds:
        path = os.path.join(F.workdir, w, f"seed_{s}", lever, "metrics.json")
        if not F.report_only:
          path = run_one(F.workdir, w, s, lever)
        if os.path.exists(path):
          rows[(w, s, lever)] = numbers(path)
  refs = {(w, s): reference(F.workdir, w, s) for w in F.worlds for s in seeds}
  timed = ["base"] + [n for n in (F.bench_levers or levers) if n != "base"]
  steps = bench(timed, F.bench_repeats) if F.bench else None
  command = "python -m experiments.levers " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  chosen = ["base"] + [n for n in F.reference_levers if n in levers and n != "base"]
  text = report(command, F.worlds, seeds, levers, rows, steps, refs, chosen)
  if F.ensemble_levers:
    text += "\n" + ENSEMBLE_INTRO + "\n" + ensemble_table(
        ensemble(F.workdir, F.worlds, seeds, F.ensemble_levers), F.ensemble_levers) + "\n"
  print(text)
  if F.out:
    from mcjax.eventlog.files import atomic_write
    if os.path.exists(F.out):
      with open(F.out) as f:
        old = f.read()
      if KEEP_BELOW in old:
        text += "\n" + KEEP_BELOW + old.split(KEEP_BELOW, 1)[1]
    atomic_write(F.out, text)  # replaced whole (but for the hand-written tail)
  if F.summary_into:
    from experiments import blocks
    blocks.put(F.summary_into, F.summary_block,
               summary_block(command, F.worlds, seeds, levers, rows, steps, refs, chosen, F.out))


if __name__ == "__main__":
  define_flags()
  app.run(main)
