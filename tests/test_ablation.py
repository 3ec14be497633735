"""python -m experiments.ablation --quick end to end on the `small` world (one seed, two configs, a
tiny model, 6-hour windows; 4,000 live exposures instead of 10,000 and XLA's cheap CPU code
generation, for the test's time): the output files and keys exist. Numbers are not checked."""

import glob
import json
import os
import subprocess
import sys

import numpy as np

from xla_flags import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_flags() -> list[str]:
  """``--config.k=v`` for every model, moment and train key where the `tiny` named config
  differs from the default (the study overrides every named config with them)."""
  from mcjax.config import default_config, load_config

  def flat(d, prefix=""):
    for k, v in d.items():
      yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
  base = dict(flat(default_config().to_dict()))
  return [f"--config.{k}={v}" for k, v in flat(load_config("tiny").to_dict())
          if k.split(".")[0] in ("model", "moment", "train") and base[k] != v]


def test_quick_study_writes_results(tmp_path):
  out = tmp_path / "RESULTS.md"
  env = dict(os.environ, XLA_FLAGS=" ".join(FAST_COMPILE), JAX_PLATFORMS="cpu")  # one device
  cmd = [sys.executable, "-m", "experiments.ablation", "--quick",
         "--configs=full,no_cross", "--nopeer", "--live_exposures=4000",
         f"--workdir={tmp_path / 'runs'}", f"--out={out}"] + tiny_flags()
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]

  text = out.read_text()
  assert text.startswith("# Ablation study")
  assert "python -m experiments.ablation --quick" in text
  for section in ("## Expectations", "## CTR", "## LVTR", "## LTR", "## Calibration", "## Slices",
                  "## Oracle headroom", "### Where the gap is", "## Freshness", "## Wall time"):
    assert section in text, section
  for png in ("auc_over_time.png", "slices.png", "freshness.png"):
    assert (tmp_path / "plots" / png).stat().st_size > 0, png
    assert f"plots/{png}" in text

  study = json.loads((tmp_path / "runs" / "study.json").read_text())
  assert study["plan"]["preset"] == "small" and study["plan"]["seeds"] == 1
  assert study["plan"]["sizes"] == {"live_exposures": 4000}
  assert study["plan"]["configs"] == ["full", "no_cross"]
  assert set(study["runs"]["0"]) >= {"full", "no_cross", "world", "samples"}
  for name in ("full", "no_cross"):
    m = json.loads((tmp_path / "runs" / "seed_0" / name / "metrics.json").read_text())
    assert {"ctr", "lvtr", "ltr"} <= set(m["overall"])

  # The peer's adapter on the same samples: every eval record, windows covering both splits.
  from experiments.peers import export_samples
  data = export_samples.export(study["runs"]["0"]["samples"], str(tmp_path / "din.npz"),
                               window_min=360.0, sv_len=8, lv_len=4)
  with np.load(data) as d:
    n_eval, n_train = len(d["eval_user"]), len(d["train_y"])
    assert d["eval_hist_live"].shape == (n_eval, 4) and d["train_sv_author"].shape[1] == 8
    assert d["windows"][0, 0] == 0 and d["windows"][-1, 1] == n_eval
    assert d["windows"][-1, 3] == n_train
    assert d["vocab"].min() > 1 and len(d["vocab"]) == len(d["vocab_names"])
  assert not glob.glob(str(tmp_path / "*.tmp*"))
