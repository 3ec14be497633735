"""The real-time loop against the batch online mode with 1-minute windows: prequential CTR
AUC and calibration, several seeds, on simulated worlds (each record is scored before its
own samples are trained, in both).

    python -m experiments.realtime_quality --worlds=default,m3like --seeds=0,1,2 \
        --workdir=runs/rt_quality --out=runs/rt_quality/table.md

For each world (``launch.generate --preset=WORLD --seed=0``, made once) and model seed
(``--config.seed``): ``launch.train`` in online mode with 1-minute windows (each window's
records scored, then its samples trained, no shuffling), and ``launch.realtime`` with a
version after every step (``publish_every_steps=1``: what is served is the newest state, as
the windowed replay's) and ``realtime.max_wait_ms`` of each ``--max_wait_ms`` (event time:
how long a part-filled batch waits). The loop runs unpaced on the batch engine's samples
(``--source=batch``): the same items the stream engine emits for these logs (a test compares
them), without the engine's time, and batches are cut on event time, so unpaced quality is
the loop's quality at any speed. Model: ``--config`` (default ``tiny``) with
``train.batch_size=--batch``.

Freshness (``--freshness``): on the first world and seed, the loop (max_wait of the first
``--max_wait_ms``) is run again with on_close samples (``moment.mode=on_close``: the
``no_moment`` config's switch) and without crowd features (``model.use_crowd=False``); for
each, and the oracle's p_click, how many event seconds after a highlight starts the served
p(click) of its live rises (``mcjax.highlight_freshness.rise_delays``: ROLL records above
the pre-highlight mean + 2 standard errors), over the world's highlights.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_WORLDS = flags.DEFINE_list("worlds", ["default", "m3like"], "World presets.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Model seeds (--config.seed).")
_MAX_WAIT = flags.DEFINE_list("max_wait_ms", ["60000", "1000"], "The loop's max_wait_ms values.")
_CONFIG = flags.DEFINE_string("config", "mcjax/configs/tiny.py", "Model config.")
_BATCH = flags.DEFINE_integer("batch", 256, "train.batch_size of both.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/rt_quality", "Where the runs go.")
_OUT = flags.DEFINE_string("out", None, "Write the markdown table here too.")
_FRESHNESS = flags.DEFINE_bool("freshness", True, "Also the highlight freshness of the loop "
                               "with realtime / on_close samples / no crowd features.")
_PLOT = flags.DEFINE_string("plot", None, "freshness: write the served p(click) uplift around "
                            "highlight onsets and the rise delays of the three here (PNG).")


def _run(argv: list[str], log: str) -> None:
  with open(log, "w") as f:
    done = subprocess.run([sys.executable, "-m", *argv], stdout=f, stderr=subprocess.STDOUT)
  if done.returncode:
    raise SystemExit(f"realtime_quality: {' '.join(argv[:3])} failed (exit "
                     f"{done.returncode}); see {log}")


def _numbers(work: str) -> dict:
  with open(os.path.join(work, "metrics.json")) as f:
    m = json.load(f)
  ctr = m["overall"]["ctr"]
  sl = m.get("slices", {})
  steps = m["realtime"]["steps"] if "realtime" in m else m.get("train", {}).get("steps")
  return {"auc": ctr["auc"], "logloss": ctr["logloss"], "base": ctr.get("base_logloss"),
          "gauc": ctr.get("gauc"), "n": ctr["n"], "steps": steps,
          **{f"auc_{k}": v.get("ctr", {}).get("auc") for k, v in sl.items()}}


def freshness(root: str, common: list[str], world: str, seed: str, wait: str) -> str:
  """The rise delays of the loop with realtime samples, on_close samples, no crowd features."""
  import pyarrow.parquet as pq
  from mcjax import highlight_freshness as fresh
  log = os.path.join(root, f"world_{world}")
  highlights = pq.read_table(os.path.join(log, "_oracle", "highlights.parquet"))
  loop = ["--source=batch", "--config.realtime.speed=0", "--config.realtime.publish_every_steps=1",
          "--config.realtime.publish_every_s=0", f"--config.realtime.max_wait_ms={wait}"]
  switch = lambda name: "--config.{}={}".format(*fresh.SWITCHES[name])  # noqa: E731
  variants = {"realtime samples (full)": [],
              "on_close samples (no_moment)": [switch("on_close")],
              "no crowd features (no_crowd)": [switch("no_crowd")]}
  preds = {}
  for name, extra in variants.items():
    tag = f"loop{int(wait) // 1000}" + ("" if not extra else "_" + name.split("(")[1][:-1])
    work = os.path.join(root, f"{world}_s{seed}_{tag}")
    if not os.path.exists(os.path.join(work, "metrics.json")):
      _run(["launch.realtime", *common, f"--workdir={work}", f"--config.data.log_dir={log}",
            f"--config.seed={seed}", *loop, *extra], work + ".log")
    preds[name] = fresh.loop_preds(work)
  delays, curves = fresh.measure(preds, highlights)
  if _PLOT.value:
    fresh.plot(delays, curves, _PLOT.value)
  return (f"Highlight freshness through the loop ({world} world, seed {seed}, max_wait "
          f"{int(wait) // 1000} s; event seconds):\n\n" + fresh.table(delays, curves))


def main(argv) -> None:
  del argv
  root = os.path.abspath(_WORKDIR.value)
  os.makedirs(root, exist_ok=True)
  common = [f"--config={_CONFIG.value}", f"--config.train.batch_size={_BATCH.value}"]
  rows = {}
  for world in _WORLDS.value:
    log = os.path.join(root, f"world_{world}")
    if not os.path.isdir(log):
      _run(["launch.generate", f"--preset={world}", f"--out={log}", "--seed=0"],
           log + ".log")
    for seed in _SEEDS.value:
      runs = {"online, 1-min windows": (
          "launch.train", ["--config.train.mode=online", "--config.train.window_min=1",
                           "--config.train.shuffle_within_window=False"])}
      for wait in _MAX_WAIT.value:
        runs[f"loop, max_wait {int(wait) // 1000} s"] = (
            "launch.realtime", ["--source=batch", "--config.realtime.speed=0",
                                "--config.realtime.publish_every_steps=1",
                                "--config.realtime.publish_every_s=0",
                                f"--config.realtime.max_wait_ms={wait}"])
      for name, (launcher, extra) in runs.items():
        work = os.path.join(root, f"{world}_s{seed}_{name.split(',')[0].split()[0]}"
                            f"{''.join(c for c in name if c.isdigit())}")
        if not os.path.exists(os.path.join(work, "metrics.json")):
          _run([launcher, *common, f"--workdir={work}", f"--config.data.log_dir={log}",
                f"--config.seed={seed}", *extra], work + ".log")
        rows.setdefault((world, name), []).append(_numbers(work))
        print(world, seed, name, rows[(world, name)][-1], flush=True)
  lines = ["| world | run | CTR AUC (mean ± sd over seeds) | Δ vs online 1-min | logloss / base "
           "| highlight AUC | steps |", "|---|---|---|---|---|---|---|"]
  for (world, name), got in rows.items():
    auc = [g["auc"] for g in got]
    ref = [g["auc"] for g in rows[(world, "online, 1-min windows")]]
    delta = [a - b for a, b in zip(auc, ref)]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    hl = [g.get("auc_highlight") for g in got if g.get("auc_highlight") is not None]
    lines.append(
        f"| {world} | {name} | {statistics.mean(auc):.4f} ± {sd(auc):.4f} | "
        f"{statistics.mean(delta):+.4f} ± {sd(delta):.4f} | "
        f"{statistics.mean(g['logloss'] for g in got):.4f} / "
        f"{statistics.mean(g['base'] for g in got):.4f} | "
        + (f"{statistics.mean(hl):.4f}" if hl else "-")
        + f" | {statistics.mean(g['steps'] or 0 for g in got):,.0f} |")
  text = "\n".join(lines)
  if _FRESHNESS.value:
    text += "\n\n" + freshness(root, common, _WORLDS.value[0], _SEEDS.value[0],
                                _MAX_WAIT.value[0])
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
