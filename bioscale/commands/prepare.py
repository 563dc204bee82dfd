"""`bioscale prepare <dataset> --out DIR`: write WebDataset shards, DALI
indices and a manifest per split (train / val held out of train / test)."""

from __future__ import annotations

import argparse
import os

from bioscale.data_pipeline.names import DATASETS  # plain data: keeps --help instant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument(
        "--src",
        help="raw dataset directory (fashion-mnist defaults to "
        "/usr/share/datasets/fashion-mnist, the Debian package path)",
    )
    parser.add_argument("--out", required=True, help="output directory; gets train/, val/, test/")
    parser.add_argument(
        "--shard-size",
        type=int,
        help="samples per shard (default: 1000 for ImageNet and folder, 5000 CIFAR-10, 10000 MNIST-likes)",
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--seed", type=int, default=0, help="chooses the held-out validation images")
    parser.add_argument("--val-size", type=int, default=10000, help="training images held out as validation")
    parser.add_argument("--max-side", type=int, help="downscale images whose longer side exceeds this (JPEG re-encode)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip undecodable images and empty classes (counted and reported) instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def run(args: argparse.Namespace) -> int:
    from bioscale.data_pipeline.prepare import prepare

    # a DataError (a missing --src, an undecodable file, a bad option) becomes one line
    # naming the file, exit 1, in bioscale.cli.main
    summary = prepare(
        args.dataset,
        args.out,
        args.src,
        shard_size=args.shard_size,
        workers=args.workers,
        seed=args.seed,
        val_size=args.val_size,
        max_side=args.max_side,
        skip_bad=args.skip_bad,
        progress=False if args.no_progress else None,
    )
    for split, s in summary.items():
        line = (
            f"{split}: {s['num_samples']} samples in {s['shards']} shards ({s['rewritten']} written, "
            f"{s['shards'] - s['rewritten']} reused) -> {os.path.join(args.out, split)}"
        )
        print(line)
        if s["quirks"]:
            print("  re-encoded: " + ", ".join(f"{k}={v}" for k, v in s["quirks"].items()))
        for item in s["skipped"] + (s["source_skipped"] if split == "train" else []):
            print(f"  skipped {item['id']}: {item['error']}")
    return 0
