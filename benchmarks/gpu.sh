#!/usr/bin/env bash
# The step benchmark on one NVIDIA GPU with no network, in a few minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: runs/gpu; or $OUT if set)
#
# Needs JAX with CUDA, flax, optax, ml_collections, absl-py and pyarrow importable by
# ${PYTHON:-python3} (mcjax.config imports the Moment engine, which imports pyarrow). Missing
# ones are installed from wheels in benchmarks/wheels/ when that folder exists (prepare it on
# a networked machine: pip download ml-collections pyarrow tabulate -d benchmarks/wheels).
# The step mode runs on synthetic batches of the real sample schema: no grain, tfds or
# array_record. Writes OUT_DIR/<config>_b<batch>.json (examples/s/chip, ms/step, MFU vs the
# published dense peak of the precision the float32 step runs in: TF32 on NVIDIA, see
# step_bench.STEP_PRECISION; embedding traffic) and prints one table per run. Then the per-chip
# memory of the compiled train and evaluation steps on this GPU (XLA's memory analysis:
# arguments, outputs, donated, temporaries, total against the GPU's memory limit; launch.compile
# --topology=local) for the same configs, into OUT_DIR/memory_<config>_b<batch>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${1:-${OUT:-runs/gpu}}"
mkdir -p "$OUT_DIR"

missing=$("$PY" - <<'PYEOF'
import importlib.util
mods = ["jax", "flax", "optax", "ml_collections", "absl", "pyarrow", "numpy"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
  if [[ -d benchmarks/wheels ]]; then
    "$PY" -m pip install --no-index --find-links benchmarks/wheels ${missing//absl/absl-py}
  else
    echo "gpu.sh: missing Python modules: $missing (no benchmarks/wheels/ to install from)" >&2
    exit 1
  fi
fi
"$PY" -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT_DIR/devices.txt"

run() {  # run NAME CONFIG BATCH [flags...]
  local name=$1 config=$2 batch=$3; shift 3
  echo "== $name: $config batch $batch $*"
  "$PY" -m launch.bench --mode=step --config="$config" --config.train.batch_size="$batch" \
    --config.mesh.shape='(1,1)' \
    --steps=20 --warmup=5 --repeats=5 --json_out="$OUT_DIR/${name}_b${batch}.json" "$@" \
    | tail -n 14
}
run full mcjax/configs/full.py 1024
run full mcjax/configs/full.py 8192
run full_hist1000 mcjax/configs/full.py 1024 --config.moment.sv_hist_len=1000
run dlrm mcjax/configs/dlrm.py 8192
run dlrm mcjax/configs/dlrm.py 65536
memory() {  # memory NAME CONFIG BATCH [flags...]: per-chip HBM of the compiled steps
  local name=$1 config=$2 batch=$3; shift 3
  echo "== memory $name: $config batch $batch $*"
  "$PY" -m launch.compile --topology=local --layout=-1x1 --config="$config" \
    --batch_per_chip="$batch" "$@" 2>&1 | tee "$OUT_DIR/memory_${name}_b${batch}.txt" | sed -n 1,7p \
    || echo "gpu.sh: $name does not fit this GPU (the line above names its largest buffers)"
}
memory full mcjax/configs/full.py 1024
memory full mcjax/configs/full.py 8192
memory full_hist1000 mcjax/configs/full.py 1024 --config.moment.sv_hist_len=1000
memory dlrm mcjax/configs/dlrm.py 65536
echo "gpu.sh: results in $OUT_DIR"
