"""launch.build_samples: every MomentConfig field is a flag; bad values name the flag."""

import json
import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "example")
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "launch.build_samples", *flags], cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_flags_reach_the_engine(tmp_path):
  out = tmp_path / "samples"
  r = _run(f"--events={EXAMPLE}", f"--out={out}", "--config.moment.mode=fast_slow",
           "--config.moment.features_at=sample", "--config.moment.sv_hist_len=3",
           "--config.moment.max_watch_s=1800", "--config.moment.first_only=False")
  assert r.returncode == 0, r.stderr[-2000:]
  moment = json.load(open(out / "build_info.json"))["moment"]
  assert moment["mode"] == "fast_slow" and moment["features_at"] == "sample"
  assert moment["sv_hist_len"] == 3 and moment["max_watch_s"] == 1800.0
  assert moment["first_only"] is False and moment["window_s"] == 30.0  # unset: the default


def test_bad_value_names_the_flag_and_writes_nothing(tmp_path):
  out = tmp_path / "samples"
  r = _run(f"--events={EXAMPLE}", f"--out={out}", "--config.moment.window_s=-1")
  assert r.returncode != 0
  assert "--config.moment.window_s=-1.0" in r.stderr
  assert not out.exists()
