"""Smoke test of `bioscale bench layers --quick` (timings are not checked, only that every
measurement runs and reports the keys outside scripts read)."""

from __future__ import annotations

import argparse
import json

from bioscale.bench import layers


def test_bench_layers_quick_reports_ratios():
    parser = argparse.ArgumentParser()
    layers.add_arguments(parser)
    result = layers.run(parser.parse_args(["--quick", "--batch", "16", "--imagenet-batch", "2", "--default-malloc"]))
    json.dumps(result)  # the CLI prints it as one JSON line
    assert result["cifar_lc_vs_conv_ratio"] > 0
    assert result["transpose_dummy_vs_explicit_ratio"] > 0
    for name in layers.IMAGENET_LC:
        assert result[f"imagenet_{name}_lc_gflops"] > 0
    assert result["lc_kernels_native"]  # g++ here: the native LC kernels built, timed against PyTorch's
    for name in ("m1", "m2", "m3", "m4"):
        for op in ("forward", "weight_grad", "adjoint"):
            assert result[f"lc_kernels_{name}_{op}_speedup"] > 0
