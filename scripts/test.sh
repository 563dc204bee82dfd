#!/usr/bin/env bash
# The whole test suite: sets itself up, then runs pytest. Extra arguments go
# to pytest (e.g. `-m "not slow"`). BIOSCALE_SLOW=1 includes slow tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
