"""`bioscale bench scale --json`: the JSON interface outside scripts read, and the ZeRO-3
memory of the full-width net falling ~1/N from N = 1 to 4 (measured and printed)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from bioscale.bench import scale


def test_bench_scale_json_has_the_speedups():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bioscale",
            "bench",
            "scale",
            "--quick",
            "--json",
            "--steps",
            "1",
            "--batch",
            "32",
            "--configs",
            "1rank,dp2,pipeline2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dp2_speedup"] > 0 and result["pipeline2_speedup"] > 0
    assert "efficiency" in proc.stdout


@pytest.mark.slow
def test_zero3_state_per_rank_falls_as_one_over_n():
    args = argparse.Namespace(rule="sdtp", zero3_ranks="1,2,4", quick=True)
    z = scale.run_zero3(args)["per_rank_bytes"]
    for n, m in z.items():
        print(
            f"N={n}: params+master+Adam {m['state_total'] / 2**20:.1f} MiB per rank, "
            f"peak RSS {m['peak_rss'] / 2**20:.0f} MiB"
        )
    one = z[1]["state_total"]
    for n in (2, 4):
        assert z[n]["state_total"] == pytest.approx(one / n, rel=0.02)
        assert all(v == v and v < 1e4 for v in z[n]["losses_rank0"])  # a few finite training steps ran
