#!/usr/bin/env bash
# The whole test suite: sets itself up, then runs pytest. Extra arguments go
# to pytest (e.g. `-m "not slow"`). BIOSCALE_SLOW=1 includes slow tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
# One thread per process: the suite runs multi-process tests beside in-process ones on
# 2 cores, and oversubscribed OpenMP threads made small-op tests 10x slower (measured).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
