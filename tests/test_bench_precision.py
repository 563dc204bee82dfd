"""`bioscale bench precision --json`: keys, and bf16 signals that survive for DTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_precision_reports_bf16_signal_fidelity():
    proc = subprocess.run(
        [sys.executable, "-m", "bioscale", "bench", "precision", "--json", "--archs", "iclr_mnist_lc"]
        + ["--rules", "dtp,bp", "--batch", "8", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["alpha"] == 1.273e-3
    for rule in ("dtp", "bp"):
        row = result["signals"]["iclr_mnist_lc"][rule]
        assert row["fp32_min_cos"] > 0.99999 and row["bf16_min_cos"] > 0.999, (rule, row)
