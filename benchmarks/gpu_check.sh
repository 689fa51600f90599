#!/usr/bin/env bash
# GPU check of the experiment engine (about 6 minutes on one H100; no internet needed).
#   benchmarks/gpu_check.sh [OUT_DIR]      results go to OUT_DIR/gpu_check.json
#   OUT_DIR defaults to $GPU_CHECK_OUT, else results/gpu.
#   GPU_CHECK_TINY=1 runs tiny sizes (a CPU smoke test of the script itself).
#   GPU_CHECK_TIMEOUT (default 400 s) kills the run; sections that would start after
#   GPU_CHECK_BUDGET (default 330 s) are skipped and reported as skipped.
#   Extra packages may come first on PYTHONPATH (e.g. PYTHONPATH=/tmp/site); src is appended.
# Needs jax, flax (with nnx.List; tested: flax 0.12.8 + jax 0.10.2 on Python 3.11, and
# flax 0.12.12 + jax 0.11.2 on Python 3.12 -- flax 0.12.8 does NOT import under jax 0.11),
# tqdm and numpy. No dataset, no mnist1d, no orbax needed (synthetic data, no checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${GPU_CHECK_OUT:-results/gpu}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true; } >"$out/nvidia-smi.txt"
"$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
tiny=()
if [ -n "${GPU_CHECK_TINY:-}" ]; then tiny=(--tiny); fi
timeout "${GPU_CHECK_TIMEOUT:-400}" "$py" benchmarks/gpu_check.py --out "$out" \
  --budget-s "${GPU_CHECK_BUDGET:-330}" "${tiny[@]}" 2>&1 | tee "$out/gpu_check.log"
