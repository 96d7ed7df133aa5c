#!/usr/bin/env bash
# The one command to run on a machine with a GPU (issue "GPU-ready"): build mmfast against the
# torch that is there (CUDA kernels required), run every CUDA-marked test, and measure every
# fused op (time, FLOP/s, bytes/s, fraction of the measured roofline, ratio to torch.compile of
# its reference). Writes everything under $OUT (default gpu-check/): info.json, pytest-cuda.txt,
# figures.json. Needs no network: it uses the packages already installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
status=0

echo "gpu_check: building mmfast with its CUDA kernels ($($PYTHON -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'))"
start=$(date +%s)
MMFAST_CUDA=ON $PYTHON -m pip install --no-build-isolation --no-deps -q -e . || exit 1
echo "gpu_check: built in $(( $(date +%s) - start )) s"
$PYTHON -c "import json, mmfast; print(json.dumps(mmfast.info(), indent=1))" | tee "$OUT/info.json"

echo "gpu_check: pytest -m cuda"
$PYTHON -m pytest -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/pytest-cuda.txt" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "gpu_check: per-op figures"
$PYTHON scripts/gpu_figures.py --device cuda --out "$OUT/figures.json" || status=1
echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $OUT/"
exit $status
