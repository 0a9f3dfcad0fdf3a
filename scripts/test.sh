#!/usr/bin/env bash
# The project's checks: ruff, mypy, then pytest.
# Usage: bash scripts/test.sh           lint, types and the default (fast) tests
#        bash scripts/test.sh --slow    the tests marked slow (real models, downloads)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if [ "${1:-}" = "--slow" ]; then
  shift
  set +e; python -m pytest -m "slow and not gpu" "$@"; rc=$?; set -e
else
  ruff check .
  ruff format --check .
  bash scripts/typecheck.sh
  set +e; python -m pytest -m "not slow and not gpu" "$@"; rc=$?; set -e
fi
# pytest exits 5 when no test was collected: fine for an empty selection
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
