"""`bioscale bench gpu --json` runs on CPU at tiny sizes and reports the GPU suite's keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_gpu_cpu_json():
    proc = subprocess.run(
        [sys.executable, "-m", "bioscale", "bench", "gpu", "--json", "--rules", "bp,fa,dtp,sdtp"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu"
    assert set(result["precisions"]) == {"fp32", "bf16"}
    for arch in result["archs"]:
        for precision in ("fp32", "bf16"):
            rules = result["throughput"][arch][precision]
            assert set(rules) == {"bp", "fa", "dtp", "sdtp"}
            assert all(r["images_per_s"] > 0 for r in rules.values())
            total = result["lc_layers"][arch][precision]["total"]
            assert total["tflops"] >= 0 and total["gbytes_per_s"] > 0 and "frac_measured_peak_bytes" in total
        split = result["profile"][arch]
        assert set(split["pct"]) == {"gemm", "unfold", "fold", "elementwise", "optimizer"}
        assert split["ms"]["gemm"] > 0 and split["ms"]["unfold"] > 0 and split["ms"]["optimizer"] > 0
    assert result["peak"]["measured_fp32_tflops"] > 0
    assert result["dali"].get("images_per_s", 0) > 0 or "error" in result["dali"]
