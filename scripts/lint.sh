#!/usr/bin/env bash
# Static checks, run by .ci/run before the tests: ruff (lint + format check) and mypy over
# the installed import names (scripts/typecheck.sh). Fails on the first that fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
BIN="$ROOT/.venv/bin"
echo "[lint] ruff check"
"$BIN/ruff" check .
echo "[lint] ruff format --check"
"$BIN/ruff" format --check .
echo "[lint] mypy"
bash scripts/typecheck.sh
