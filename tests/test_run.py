"""``launch.run`` (what ``make run`` runs) end to end on the `small` world with one config:
the batch run, the real-time loop through the stream engine, the report with both; a rerun
reuses the finished runs (the loop's numbers unchanged, not re-timed)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(work: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "launch.run", f"--workdir={work}", "--configs=full",
       "--config.data.preset=small", "--config.train.window_min=120"],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})


def test_make_run_on_the_small_world_with_the_real_time_loop(tmp_path):
  work = str(tmp_path / "run")
  first = _run(work)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(work, "realtime", "metrics.json")) as f:
    rt = json.load(f)
  r = rt["realtime"]
  assert r["source"] == "stream engine" and not r["stopped"]
  assert r["trained_rows"] > 0 and rt["overall"]["ctr"]["n"] > 0
  assert r["engine"]["counts"]["request"] == rt["overall"]["ctr"]["n"]  # every record scored
  with open(os.path.join(work, "report.md")) as f:
    text = f.read()
  assert "## The real-time loop (`tiny` model)" in text and "(realtime/report.md)" in text
  ref = text.split("## What the log allows: the observable reference (CTR AUC)")[1]
  row = [x for x in ref.splitlines() if x.startswith("| full ")][0].split("|")
  model, lr, oracle = float(row[3]), float(row[4]), float(row[7])  # AUCs of the same records
  assert 0.5 < model < oracle and 0.5 < lr < oracle, row
  assert os.path.exists(os.path.join(work, "realtime", "report.md"))
  line = [x for x in first.stdout.splitlines() if x.startswith("real-time loop (tiny)")]
  again = _run(work)
  assert again.returncode == 0, again.stderr[-3000:]
  assert line and line == [x for x in again.stdout.splitlines()
                           if x.startswith("real-time loop (tiny)")]
