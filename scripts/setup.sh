#!/usr/bin/env bash
# Create .venv and install ttc with the CPU build of torch and the dev tools.
# Usage: bash scripts/setup.sh            (idempotent; re-run after pulling)
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
# The CPU build of torch first: a plain `torch` requirement would pull a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[cpu,dev]"
echo "ttc is installed in .venv: run .venv/bin/ttc --help"
