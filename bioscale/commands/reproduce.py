"""`bioscale reproduce <table> [--budget small|paper] [--launcher local|slurm] --out DIR [--set key=value ...]`

Runs every row of one of the paper's tables (methods × architectures) with its config from
configs/, then writes DIR/results.md, DIR/results.csv and DIR/figures/*.png next to the
paper's numbers. Re-running skips finished rows and resumes unfinished ones.

Tables: fashion-mnist (real data on the dev machine; prepared automatically), mnist,
cifar10, cifar10-aug, imagenet (`--data` a directory made by `bioscale prepare`)."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bioscale.experiments.tables import TABLES  # plain data: no torch, --help stays instant

    parser.add_argument("table", choices=tuple(TABLES))
    parser.add_argument(
        "--budget",
        default="small",
        choices=tuple(dict.fromkeys(b for t in TABLES.values() for b in t.budgets)),
        help="small: minutes per row on a CPU (the default); full (fashion-mnist, later-fashion-mnist): a pruned "
        "random search per row, then the chosen configuration to 30 epochs over 3 seeds; paper: the paper's epochs",
    )
    parser.add_argument("--out", help="output directory (runs/, results.md, results.csv, figures/)")
    parser.add_argument(
        "--data",
        help="prepared dataset directory (default: data/<dataset>; fashion-mnist is "
        "prepared there from the Debian package when missing)",
    )
    parser.add_argument("--seeds", type=int, help="seeds per row (default: the budget's, 1)")
    parser.add_argument(
        "--rows",
        action="append",
        default=[],
        metavar="GLOB",
        help="only rows whose key matches, e.g. 'fc_*' or 'fashion_mnist/lc_sdtp' (repeatable)",
    )
    parser.add_argument(
        "--max-parallel",
        type=int,
        help="runs at once (local: pool processes, default 1, each with CPUs/N threads; slurm: array throttle)",
    )
    parser.add_argument(
        "--launcher",
        default="local",
        choices=("local", "slurm"),
        help="local: a pool of --max-parallel processes here (default); slurm: SLURM jobs through submitit, then wait",
    )
    parser.add_argument("--profile", help="cluster profile for --launcher slurm (cluster/profiles/NAME.yaml)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures (no matplotlib needed)")
    parser.add_argument("--list", action="store_true", help="print the table's rows and configs, run nothing")
    # an option, not trailing positionals: argparse would bind those to the table's chunk and reject them
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set data.num_workers=0 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from bioscale.experiments import get_table, reproduce
    from bioscale.training.config import ConfigError

    table = get_table(args.table)
    if args.list:
        for row in table.rows:
            print(f"{row.key:45s} {row.method:22s} {row.net:22s} configs/{row.config}")
        return 0
    if not args.out:
        raise ConfigError("--out DIR is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = Path(args.data) if args.data else Path("data") / table.dataset
    if not (data / "train" / "manifest.json").exists():
        if args.data or table.dataset != "fashion-mnist":
            raise ConfigError(
                f"no prepared dataset at {data}; run `bioscale prepare {table.dataset} "
                f"--src RAW --out {data}` first (or pass --data)"
            )
        from bioscale.data_pipeline.prepare import prepare

        prepare("fashion-mnist", data, workers=min(2, os.cpu_count() or 1), progress=False)
    from bioscale.cluster.executors import make_executor
    from bioscale.cluster.profile import load_profile

    executor = make_executor(
        args.launcher,
        Path(args.out).resolve() / "logs",
        profile=load_profile(args.profile) if args.launcher == "slurm" else None,
        max_parallel=args.max_parallel,
    )
    context = [
        f"Command: `{_command(args)}`",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"runs on {executor.describe()}.",
    ]
    try:
        summary = reproduce(
            table,
            args.budget,
            data=data,
            out=args.out,
            seeds=args.seeds,
            rows=args.rows,
            overrides=args.overrides,
            executor=executor,
            figures=not args.no_figures,
            context=context,
        )
    finally:
        executor.shutdown()
    print(f"wrote {summary.markdown} and {summary.csv} ({len(summary.figures)} figures) in {summary.wall_s:.0f} s")
    return 0 if all(r.status == "ok" for r in summary.results) else 1


def _command(args: argparse.Namespace) -> str:
    """The invocation, rebuilt from the parsed options (for results.md)."""
    words = ["bioscale", "reproduce", args.table, "--budget", args.budget, "--out", args.out]
    words += ["--data", args.data] if args.data else []
    words += ["--seeds", str(args.seeds)] if args.seeds else []
    for pattern in args.rows:
        words += ["--rows", pattern]
    words += ["--launcher", "slurm"] if args.launcher == "slurm" else []
    words += ["--max-parallel", str(args.max_parallel)] if args.max_parallel else []
    for override in args.overrides:
        words += ["--set", override]
    return " ".join(shlex.quote(w) for w in words)
