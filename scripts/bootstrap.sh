#!/usr/bin/env bash
# Set up everything the two README commands need, idempotently:
# Debian packages (Fashion-MNIST, venv support), a virtualenv in .venv with the
# CPU torch pinned *before* anything else (a dependency must never pull a CUDA
# torch), and bioscale installed editable with all extras.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${BIOSCALE_VENV:-$ROOT/.venv}"
TORCH_SPEC="${BIOSCALE_TORCH:-torch==2.13.0}"

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv python3-pip)
command -v c++ >/dev/null || command -v g++ >/dev/null || need_apt+=(g++)  # the LC layers' native kernels (models/lc_native.py)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[bootstrap] apt-get install ${need_apt[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null; }
    else
        echo "[bootstrap] missing Debian packages: ${need_apt[*]} (run as root or install them)" >&2
    fi
fi

stamp="$VENV/.bioscale-stamp"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "[bootstrap] creating $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" install "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c 'import torch' || { echo "[bootstrap] torch failed to install" >&2; exit 1; }
# setuptools warns at length that configs/*/ look like namespace packages (they are package
# data of bioscale.configs): keep the install's output in a log, shown only if it fails
"${PIP[@]}" install -e ".[all,test]" > "$VENV/.install.log" 2>&1 \
    || { grep -v "is ignored" "$VENV/.install.log" >&2; echo "[bootstrap] pip install failed" >&2; exit 1; }
"$VENV/bin/python" -c 'import bioscale, torch, webdataset, submitit, tensorboard' \
    || { echo "[bootstrap] install incomplete" >&2; exit 1; }
echo "$want" > "$stamp"
echo "[bootstrap] ready: $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
