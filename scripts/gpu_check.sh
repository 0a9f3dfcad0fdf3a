#!/usr/bin/env bash
# GPU checks in one go (under 8 minutes): the kernels' `gpu` tests, then
# benchmarks/kernel_speed.py. Needs only torch and triton on a CUDA machine; ttc need not be
# installed (the tests then import the kernels folder standalone, see tests/kernels/_device.py).
# Usage: bash scripts/gpu_check.sh            (PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if ! "$py" -c "import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: needs a CUDA device with torch and triton importable by $py" >&2
  exit 2
fi
unset TRITON_INTERPRET
start=$(date +%s)
rc=0
# --confcutdir keeps tests/conftest.py (which needs all of ttc) out; -c keeps the markers.
timeout 180 "$py" -m pytest -c pyproject.toml --confcutdir tests/kernels -p no:cacheprovider \
  -m gpu -q tests/kernels || rc=$?
echo "gpu tests: exit $rc after $(( $(date +%s) - start )) s"
timeout 270 "$py" benchmarks/kernel_speed.py --reps 3 || rc=$?
echo "gpu_check done after $(( $(date +%s) - start )) s (exit $rc)"
exit "$rc"
