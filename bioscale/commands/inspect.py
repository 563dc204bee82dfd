"""`bioscale inspect PATH`: verify shards against their manifest (counts,
checksums, every member decodes). PATH: a split directory, its
manifest.json, or a directory of splits. Exit 1 naming shard and member on
any damage; a PATH with no manifest at all is one line, exit 1 (a `DataError`)."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="split directory, manifest.json, or the --out directory of prepare")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="shards checked in parallel")
    parser.add_argument("--no-decode", action="store_true", help="skip image decoding (checksums and labels only)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bioscale.data_pipeline import DataError
    from bioscale.data_pipeline.manifest import manifest_path
    from bioscale.data_pipeline.verify import find_splits, verify_split

    splits = find_splits(args.path)
    if not Path(args.path).exists():
        raise DataError(f"{args.path}: no such file or directory")
    if splits == [Path(args.path)] and not manifest_path(args.path).exists():
        raise DataError(
            f"{manifest_path(args.path)}: no manifest (nor */manifest.json below {args.path}); "
            "run `bioscale prepare` first"
        )
    status = 0
    for split_dir in splits:
        report = verify_split(split_dir, decode=not args.no_decode, workers=args.workers)
        print(
            f"{report.path}: {report.dataset}/{report.split}: {report.num_samples} samples "
            f"(manifest {report.expected}) in {report.shards} shards"
        )
        counts = [report.class_counts.get(c, 0) for c in range(len(report.classes))]
        if 0 < len(report.classes) <= 50:
            width = max(len(c) for c in report.classes)
            for c, name in enumerate(report.classes):
                print(f"  {c:4d} {name:<{width}} {counts[c]}")
        elif report.classes:  # ImageNet: 1000 lines would bury the verdict
            low, high = counts.index(min(counts)), counts.index(max(counts))
            print(
                f"  {len(counts)} classes: min {counts[low]} ({report.classes[low]}), "
                f"max {counts[high]} ({report.classes[high]}), mean {sum(counts) / len(counts):.1f}"
            )
        for problem in report.problems:
            print(f"DAMAGED {problem}", file=sys.stderr)
        if report.ok:
            print("  OK: checksums match" + ("" if args.no_decode else ", every member decodes"))
        else:
            print(f"  {len(report.problems)} problem(s)", file=sys.stderr)
            status = 1
    return status
