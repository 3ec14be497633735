"""The ablation study: named configs x seeds on simulated worlds, then RESULTS.md.

    python -m experiments.ablation [--configs=full,no_moment,...] [--seeds=3] \
        [--preset=default] [--users=.. --hours=.. ...] [--workdir=runs/ablation] \
        [--out=experiments/RESULTS.md] [--peer] [--quick] [--config.train.window_min=30 ...]

For each seed s: the world ``WORKDIR/seed_s/world`` is simulated with seed s, every config is
trained online (prequential) on it with model seed s into ``WORKDIR/seed_s/<config>``, all
sharing one sample cache ``WORKDIR/seed_s/samples``; with ``--peer`` the `full` config's
samples and windows are exported and DeepCTR-Torch's DIN is trained on them in the peer venv
(``experiments/peers/``). Finished runs are reused, so a rerun only does what is missing.
Then ``experiments.ablation_report`` writes RESULTS.md (command at the top) and its plots.

``--quick``: the `small` world, one seed, four configs and 60-minute windows (~5 minutes).
``--config.a.b=v`` (any key of ``mcjax.config.default_config()``, the syntax of
``launch.train``) overrides that key in every named config; only the keys given change.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import ablation_report
from experiments.peers import export_samples
from mcjax import config as mcconfig
from mcjax.sim import config as sim_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_CONFIGS = ("full", "no_moment", "fast_slow", "no_first_only", "no_crowd", "no_cross",
               "no_contrastive", "baseline")
QUICK_CONFIGS = ("full", "no_moment", "no_cross", "baseline")
QUICK_SET = {"train.window_min": 60.0}
PEER_DIR = os.path.join(ROOT, "experiments", "peers")
PEER_PYTHON = os.path.join(PEER_DIR, ".venv", "bin", "python")

_CONFIGS = flags.DEFINE_list("configs", list(ALL_CONFIGS),
                             "Named configs from mcjax/configs ('baseline' is needed for "
                             "the headroom share, 'full' for every delta).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 (world seed and model seed).")
_PRESET = flags.DEFINE_enum("preset", "default", sorted(sim_config.PRESETS), "World preset.")
_SIZES = {name: flags.DEFINE_integer(name, None, f"World size override: {name}.")
          for name in sim_config.SIZE_FLAGS}
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "Folder for worlds, runs, exports.")
_OUT = flags.DEFINE_string("out", os.path.join("experiments", "RESULTS.md"),
                           "The Markdown results page (plots go to plots/ beside it).",
                           allow_override=True)
_PEER = flags.DEFINE_bool("peer", True, "Also train DeepCTR-Torch's DIN on the `full` samples "
                          "(needs experiments/peers/.venv: bash experiments/peers/setup.sh).")
_QUICK = flags.DEFINE_bool("quick", False, "~5-minute version: the `small` world, one seed, "
                           f"configs {','.join(QUICK_CONFIGS)}, {QUICK_SET}.")
_CONFIG = config_flags.DEFINE_config_dict(
    "config", mcconfig.default_config(), "Overrides for every named config: "
    "--config.train.window_min=30 --config.model.crowd.hidden='(16,)' (only the keys given "
    "are applied; the named configs' other values stay).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Train nothing: write RESULTS.md from "
                                 "the finished runs in --workdir (a config may then have "
                                 "fewer seeds than --seeds).")
_PEER_ARGS = flags.DEFINE_list("peer_args", [], "Extra flags for din_ablation.py "
                               "(e.g. --epochs=1,--dim=16).")


def load_config(name: str, overrides: dict):
  """The named config with the --config overrides; a usage error otherwise."""
  try:
    return mcconfig.load_config(name, overrides)
  except ValueError as e:
    raise app.UsageError(f"--configs/--config: {e}") from None


def plan(argv_flags=None) -> dict:
  """The study's settings from the flags (``--quick`` fills in what was not given)."""
  quick = _QUICK.value
  given = set(argv_flags or ())
  configs = list(_CONFIGS.value)
  if quick and "configs" not in given:
    configs = list(QUICK_CONFIGS)
  return {
      "configs": configs,
      "seeds": 1 if quick and "seeds" not in given else _SEEDS.value,
      "preset": "small" if quick and "preset" not in given else _PRESET.value,
      "sizes": {k: f.value for k, f in _SIZES.items() if f.value is not None},
      "overrides": {**(QUICK_SET if quick else {}),
              **config_flags.get_override_values(flags.FLAGS["config"])},
      "peer": _PEER.value,
      "report_only": _REPORT_ONLY.value,
      "workdir": _WORKDIR.value,
      "out": _OUT.value,
  }


def ensure_world(root: str, preset: str, seed: int, sizes: dict) -> str:
  from mcjax.sim import world
  log_dir = os.path.join(root, "world")
  if not os.path.exists(log_dir):
    world.build(log_dir, preset, seed, **sizes)
  return log_dir


def run_seed(p: dict, seed: int, timings: dict) -> dict:
  """Trains every config on world ``seed`` (with ``--report_only``: collects the finished
  runs only); returns config -> the run's folder, plus "world", "samples" and "din"."""
  from mcjax.train import loop
  from mcjax.train import data
  root = os.path.join(p["workdir"], f"seed_{seed}")
  t = time.time()
  built = not os.path.exists(os.path.join(root, "world"))
  log_dir = ensure_world(root, p["preset"], seed, p["sizes"])
  if built:
    timings[f"seed {seed}: world"] = time.time() - t
  dirs = {}
  for name in p["configs"]:
    cfg = load_config(name, p["overrides"])
    cfg.data.log_dir, cfg.seed = log_dir, seed
    run_dir = os.path.join(root, name)
    done = os.path.exists(os.path.join(run_dir, "metrics.json"))
    if not done and p["report_only"]:
      continue
    t = time.time()
    if not done:
      samples = data.prepare(cfg, root, os.path.join(root, "samples"))
      m = loop.train_and_evaluate(cfg, run_dir, samples)
      ctr = m["overall"]["ctr"]
      print(f"seed {seed} {name}: CTR AUC {ctr['auc']:.4f} GAUC {ctr['gauc']:.4f} "
            f"({time.time() - t:.0f} s)", flush=True)
      timings[f"seed {seed}: {name} (samples + train + eval)"] = time.time() - t
    dirs[name] = run_dir
  cfg = load_config("full", p["overrides"])
  cfg.data.log_dir, cfg.seed = log_dir, seed
  dirs["samples"] = data.prepare(cfg, root, os.path.join(root, "samples"))
  dirs["world"] = log_dir
  din_done = os.path.exists(os.path.join(root, "din", "done.json"))
  if p["peer"] and not p["report_only"] and not din_done:
    t = time.time()
    dirs["din"] = run_peer(p, seed, root, cfg, dirs["samples"])
    timings[f"seed {seed}: din (peer: export + train + eval)"] = time.time() - t
  elif din_done:
    dirs["din"] = os.path.join(root, "din")
  return dirs


def run_peer(p: dict, seed: int, root: str, cfg, samples_dir: str) -> str:
  """Exports the `full` samples of this world and trains the peer DIN on them."""
  out_dir = os.path.join(root, "din")
  data = export_samples.export(samples_dir, os.path.join(root, "din_data.npz"),
                               window_min=float(cfg.train.window_min),
                               sv_len=int(cfg.moment.sv_hist_len),
                               lv_len=int(cfg.moment.lv_hist_len))
  cmd = [PEER_PYTHON, "-m", "experiments.peers.din_ablation", f"--data={data}",
         f"--out_dir={out_dir}", f"--seed={seed}"] + list(_PEER_ARGS.value)
  print("peer:", " ".join(shlex.quote(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c)
                          for c in cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)
  return out_dir


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  given = {name for name in flags.FLAGS if flags.FLAGS[name].present}
  p = plan(given)
  if p["seeds"] <= 0:
    raise app.UsageError(f"--seeds must be positive, got {p['seeds']}")
  if "full" not in p["configs"]:
    raise app.UsageError(f"--configs must include 'full' (every delta is from it), got "
                         f"{p['configs']}")
  if p["peer"] and not p["report_only"] and not os.path.exists(PEER_PYTHON):
    raise app.UsageError("--peer needs experiments/peers/.venv: run "
                         "`bash experiments/peers/setup.sh` first (or pass --nopeer)")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  for name in p["configs"]:  # fail early on a bad name or override
    load_config(name, p["overrides"])
  command = "python -m experiments.ablation " + " ".join(
      shlex.quote(a) for a in sys.argv[1:])
  os.makedirs(p["workdir"], exist_ok=True)
  timing_path = os.path.join(p["workdir"], "timings.json")
  timings = {}
  if os.path.exists(timing_path):  # stages of earlier invocations on this workdir
    with open(timing_path) as f:
      timings = json.load(f)
  runs, before = {}, dict(timings)
  t0 = time.time()
  for seed in range(p["seeds"]):
    runs[seed] = run_seed(p, seed, timings)
    with open(timing_path, "w") as f:
      json.dump(timings, f, indent=1)
  if timings != before:  # something ran: add this invocation's wall time
    key = f"total of `{command}`"
    timings[key] = timings.get(key, 0.0) + time.time() - t0
  with open(timing_path, "w") as f:
    json.dump(timings, f, indent=1)
  with open(os.path.join(p["workdir"], "study.json"), "w") as f:
    json.dump({"command": command, "plan": p, "runs": runs, "timings": timings}, f, indent=1)
  path = ablation_report.write_results(p["out"], command=command, plan=p, runs=runs,
                                       timings=timings)
  print(f"results: {path}")


if __name__ == "__main__":
  app.run(main)
