"""`bioscale bench data`: both readers timed on the same synthetic JPEG shards."""

from __future__ import annotations

import argparse
import json

from bioscale.bench import data


def test_bench_data_reports_both_readers_and_the_ratio(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")  # added by bioscale/commands/bench.py
    data.add_arguments(parser)
    args = parser.parse_args(["--json", "--images", "96", "--batch-size", "16", "--repeats", "1", "--image-size", "64"])
    result = data.run(args)
    json.dumps(result)  # the command prints it as one JSON line
    for name in ("dali", "pil"):
        assert result[f"{name}_images_per_s"] > 0 and result[f"{name}_cpu_ms_per_image"] > 0
    ratio = result["pil_cpu_ms_per_image"] / result["dali_cpu_ms_per_image"]
    assert abs(result["dali_vs_pil_cpu_ratio"] - ratio) < 0.01
    assert result["num_samples"] == 96 and "random-resized-crop 64" in result["transform"]
