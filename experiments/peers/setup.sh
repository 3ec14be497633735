#!/usr/bin/env bash
# Creates experiments/peers/.venv with the PyTorch peer (torch 2.13 CPU + DeepCTR-Torch).
# The peer never becomes a dependency of mcjax: it lives only in this separate venv.
#   bash experiments/peers/setup.sh   (then: experiments/peers/.venv/bin/python -m ...)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
if [[ ! -x "$here/.venv/bin/python" ]]; then
  "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet torch==2.13.0 deepctr-torch requests  # deepctr_torch imports requests undeclared
"$here/.venv/bin/python" -c "import torch, deepctr_torch; print('torch', torch.__version__, 'deepctr_torch', deepctr_torch.__version__)"
