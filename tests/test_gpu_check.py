"""scripts/gpu_check.sh: the argument handling and budget (fast), and its --cpu mode end to
end (doctor, bench gpu, synthetic 224 shards, four short training runs incl. DeepSpeed
ZeRO-2/3 on one gloo process): ~40 s on 2 cores (measured), so in the default suite."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _run(*args, timeout=600):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_usage_and_exhausted_budget(tmp_path):
    assert _run().returncode == 2
    assert _run(tmp_path / "x", "soon").returncode == 2
    proc = _run(tmp_path / "out", 0, "--cpu")  # nothing fits: every step is skipped with a line
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "skip  doctor:" in summary and "skip  bench gpu:" in summary
    assert "FAIL  train: no shards" in summary  # nothing was prepared, so nothing could train
    assert proc.returncode == 1


# slow (~100 s): every step it runs has its own test in the default suite (doctor, bench gpu,
# bench precision, bf16 training on CPU, DeepSpeed ZeRO bf16 with angles); this checks the
# script's plumbing end to end, before the one GPU session that runs it
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cpu_mode_end_to_end(tmp_path):
    out = tmp_path / "check"
    proc = _run(out, 400, "--cpu")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-3000:]
    for name in ("doctor", "bench gpu", "bench precision", "synthetic shards", "train fp32", "train bf16"):
        assert f"ok    {name} (" in summary, name
    assert "ok    train deepspeed zero2 bf16 angles" in summary
    assert "ok    train deepspeed zero3 bf16" in summary
    assert json.loads((out / "bench_gpu.json").read_text())["device"] == "cpu"
    metrics = (out / "train_zero2" / "metrics.jsonl").read_text()
    assert "angle_to_bp_deg" in metrics
    for run in ("train_fp32", "train_bf16", "train_zero2", "train_zero3"):
        assert (out / run / "result.json").exists(), run
