#!/usr/bin/env bash
# Type-check the installed import names (`bioscale.models`, ...). mypy cannot follow the
# package-dir mapping of pyproject.toml, so this builds the installed layout as a tree of
# symlinks under build/typecheck/ (bioscale/ with models -> ../../../models, ...) and checks
# that; error paths read build/typecheck/bioscale/<folder>/<file>.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VIEW=build/typecheck/bioscale
mkdir -p build
exec 9> build/.typecheck.lock
flock 9  # one view at a time: two checks rebuilding it at once would see each other's half-built tree
rm -rf build/typecheck
mkdir -p "$VIEW"
for entry in bioscale/*.py bioscale/commands bioscale/bench; do
    ln -s "$ROOT/$entry" "$VIEW/$(basename "$entry")"
done
for folder in $(sed -n 's/^"bioscale\.\([a-z_]*\)" = "\([a-z_]*\)"$/\1:\2/p' pyproject.toml); do
    ln -s "$ROOT/${folder#*:}" "$VIEW/${folder%%:*}"
done
exec "${PYTHON:-$ROOT/.venv/bin/python}" -m mypy --config-file pyproject.toml "$@" -p bioscale
