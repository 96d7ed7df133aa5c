#!/usr/bin/env bash
# Install everything mmfast needs into ./.venv and build the extension. Idempotent: a second run
# reuses the environment and rebuilds only what changed (scikit-build-core's build-dir).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MMFAST_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  echo "mmfast setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# pip's output is kept whole on failure; on success only its warnings worth reading are shown.
pip_install() {
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install --disable-pip-version-check -q "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  rm -f "$log"
}

if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "mmfast setup: installing $TORCH_SPEC"
  pip_install $TORCH_SPEC
fi
# Build tools: we build with --no-build-isolation so the extension compiles against this torch.
pip_install "scikit-build-core>=0.10" "cmake>=3.26" ninja
echo "mmfast setup: building mmfast (C++/CUDA extension, incremental) and dev extras"
pip_install --no-build-isolation -e ".[dev]"
.venv/bin/python -c "import mmfast; i = mmfast.info(); print(f\"mmfast setup: ready (mmfast {i['version']}, torch {i['torch']}, cpu {i['cpu_isa']}, cuda kernels {i['cuda_kernels']})\")"
