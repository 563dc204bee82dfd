#!/usr/bin/env bash
# One prepared check of a GPU node, everything written to one folder:
#
#   scripts/gpu_check.sh OUT_DIR [BUDGET_S=480] [--cpu]
#
#   1. bioscale doctor --json                      -> OUT/doctor.log
#   2. pytest -m gpu                               -> OUT/pytest_gpu.log
#   3. bioscale bench gpu --json                   -> OUT/bench_gpu.log, OUT/bench_gpu.json
#      bioscale bench precision --json             -> OUT/bench_precision.log (bf16 signals)
#   4. synthetic ~256 px JPEG shards (224 crops)   -> OUT/data/shards
#   5. four short `bioscale train` runs on them    -> OUT/train_<name>/ + OUT/train_<name>.log
#        fp32 | bf16 | DeepSpeed ZeRO-2 bf16 with BP angles on | DeepSpeed ZeRO-3 bf16
#   OUT/summary.txt: one line per step (ok / FAIL / skip, seconds); exit 1 if any failed.
#
# BUDGET_S bounds the whole script (default 480 s = 8 min): each step runs under `timeout`
# with what is left, and steps that no longer fit are skipped with a line saying so.
#
# --cpu: the same steps at tiny sizes on the CPU (what the test suite runs): no pytest
# (the suite is already running), the bench at 16 px, the training runs on the conv twin
# of the ICLR ImageNet net for 2 steps, bf16 as CPU autocast, DeepSpeed on one gloo process.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

OUT="" BUDGET=480 CPU=0
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) if [ -z "$OUT" ]; then OUT="$arg"; else BUDGET="$arg"; fi ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "usage: scripts/gpu_check.sh OUT_DIR [BUDGET_S] [--cpu]" >&2
    exit 2
fi
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: BUDGET_S must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$(date +%s)
FAILED=0
cd "$ROOT"
export PYTHONUNBUFFERED=1

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME MIN_SECONDS LOG command...: run under the time left; record ok / FAIL / skip
step() {
    local name="$1" need="$2" log="$3"
    shift 3
    local remaining
    remaining=$(left)
    if [ "$remaining" -lt "$need" ]; then
        note "skip  $name: ${remaining}s of the ${BUDGET}s budget left, needs ~${need}s"
        return 0
    fi
    local t0=$(date +%s) rc
    echo "== $name (up to ${remaining}s): $*" >&2
    timeout --kill-after=10 "$remaining" "$@" > "$log" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then
        note "ok    $name (${dt}s)"
    else
        local why
        why=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-300)
        [ $rc -eq 124 ] && why="timed out after ${dt}s (budget)"
        note "FAIL  $name (${dt}s, exit $rc): $why  [log: $log]"
        FAILED=1
    fi
}

if [ $CPU -eq 1 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny ops on shared cores
    DEVICE=cpu
    DOCTOR=(--batch 2)
    BENCH=(--archs iclr_cifar_lc --rules bp,sdtp --precisions fp32,bf16 --skip layers,dali)
    DATA=(--train 16 --val 8 --test 8 --size 240 --shard-size 8 --workers 1)
    ARCH=iclr_imagenet_conv
    TRAIN=(data.batch_size_per_rank=2 train.max_steps_per_epoch=2 data.num_workers=0)
    PRECISION=(--archs iclr_mnist_lc --rules dtp,sdtp --batch 8)
else
    DEVICE=cuda
    DOCTOR=()
    BENCH=()
    DATA=(--train 2048 --val 128 --test 128 --size 256 --shard-size 256 --workers 8)
    ARCH=iclr_imagenet_lc
    TRAIN=(data.batch_size_per_rank=64 train.max_steps_per_epoch=20 data.num_workers=6)
    PRECISION=()
fi
note "gpu_check: $(date -u +%FT%TZ) on $(hostname), out $OUT, budget ${BUDGET}s, device $DEVICE"

step doctor 20 "$OUT/doctor.log" "$PY" -m bioscale doctor --device "$DEVICE" --json "${DOCTOR[@]}"

if [ $CPU -eq 1 ]; then
    note "skip  pytest -m gpu: --cpu mode (the gpu tests skip without CUDA)"
else
    step "pytest -m gpu" 30 "$OUT/pytest_gpu.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
fi

step "bench gpu" 20 "$OUT/bench_gpu.log" "$PY" -m bioscale bench gpu --json --device "$DEVICE" "${BENCH[@]}"
[ -s "$OUT/bench_gpu.log" ] && tail -n 1 "$OUT/bench_gpu.log" | grep '^{' > "$OUT/bench_gpu.json"
step "bench precision" 10 "$OUT/bench_precision.log" "$PY" -m bioscale bench precision --json --device "$DEVICE" \
    "${PRECISION[@]}"

step "synthetic shards" 10 "$OUT/data.log" "$PY" -m bioscale.data_pipeline.synthetic --out "$OUT/data" "${DATA[@]}"
SHARDS="$OUT/data/shards"

COMMON=(--data "$SHARDS" model.arch="$ARCH" distributed.device="$DEVICE" train.epochs=1
        train.eval_splits=[val] train.log_every_steps=1 train.checkpoint_every_steps=0 "${TRAIN[@]}")
if [ -f "$SHARDS/train/manifest.json" ]; then
    step "train fp32" 20 "$OUT/train_fp32.log" "$PY" -m bioscale train --out "$OUT/train_fp32" \
        "${COMMON[@]}" distributed.precision=fp32 train.angle_every_steps=0
    step "train bf16" 20 "$OUT/train_bf16.log" "$PY" -m bioscale train --out "$OUT/train_bf16" \
        "${COMMON[@]}" distributed.precision=bf16 train.angle_every_steps=0
    if "$PY" -c "import deepspeed" > /dev/null 2>&1; then
        step "train deepspeed zero2 bf16 angles" 40 "$OUT/train_zero2.log" "$PY" -m bioscale train \
            --out "$OUT/train_zero2" "${COMMON[@]}" distributed.backend=deepspeed distributed.zero_stage=2 \
            distributed.precision=bf16 train.angle_every_steps=1
        step "train deepspeed zero3 bf16" 40 "$OUT/train_zero3.log" "$PY" -m bioscale train \
            --out "$OUT/train_zero3" "${COMMON[@]}" distributed.backend=deepspeed distributed.zero_stage=3 \
            distributed.precision=bf16 train.angle_every_steps=0
    else
        note "skip  train deepspeed zero2/zero3: DeepSpeed does not import (the \`distributed\` extra)"
    fi
else
    note "FAIL  train: no shards at $SHARDS (see $OUT/data.log)"
    FAILED=1
fi

note "gpu_check: $([ $FAILED -eq 0 ] && echo 'all steps passed' || echo 'some steps FAILED') in $(( $(date +%s) - START ))s"
exit $FAILED
