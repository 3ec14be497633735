"""The README's "In Python" example, run as written (paths moved to a temporary folder): the
public API of ``mcjax/__init__.py`` from a simulated world to a ranked request."""

import os
import re
import subprocess
import sys

from xla_flags import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text[text.index("## In Python"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path):
  code = readme_example().replace("/tmp/mc", str(tmp_path))
  assert 5 <= len(code.strip().splitlines()) <= 6  # the import and five calls
  check = ("\nimport json, numpy as np\n"
           "assert {'ctr', 'lvtr', 'ltr'} <= set(metrics['overall'])\n"
           "assert sorted(ranking.live_ids.tolist()) == [1, 2, 3]\n"
           "assert np.all(np.diff(ranking.ranking_score) <= 0)\n"
           "print('ok')\n")
  env = dict(os.environ, XLA_FLAGS=" ".join(FAST_COMPILE), JAX_PLATFORMS="cpu",  # one device
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  run = subprocess.run([sys.executable, "-c", code + check], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.strip().endswith("ok")
