#!/usr/bin/env bash
# The main job on the embedded default: prepare Fashion-MNIST shards from the Debian
# package, then train the ICLR MNIST locally-connected net with SDTP on the CPU.
# TensorBoard logs land in runs/fashion_mnist_lc_sdtp/tb. Re-running resumes.
# Extra arguments go to `bioscale train` (e.g. --epochs 10, optim.forward.lr=3e-4).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
BIN="$ROOT/.venv/bin"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
DATA="${BIOSCALE_DATA:-$ROOT/data/fashion-mnist}"
RUN="${BIOSCALE_RUN:-$ROOT/runs/fashion_mnist_lc_sdtp}"
"$BIN/bioscale" prepare fashion-mnist --out "$DATA"
"$BIN/bioscale" train --config configs/fashion_mnist/lc_sdtp.yaml --data "$DATA" --out "$RUN" "$@"
echo
echo "result: $RUN/result.json"
echo "TensorBoard: $BIN/tensorboard --logdir $RUN/tb"
