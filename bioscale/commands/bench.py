"""`bioscale bench <suite> [--json] [options]`: each suite lives in `bioscale/bench/<suite>.py`
with `add_arguments(parser)` and `run(args) -> dict`; the dict is printed as one JSON
object on the last line of stdout when --json is given. Only the chosen suite is
imported, so one suite's missing dependency never breaks the others."""

from __future__ import annotations

import argparse
import importlib
import json

SUITES = ("layers", "data", "train", "scale", "ddp", "pool", "gpu", "precision")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=SUITES, help="which benchmark")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the suite's options (`bioscale bench SUITE -h`)")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"bioscale.bench.{args.suite}")
    parser = argparse.ArgumentParser(prog=f"bioscale bench {args.suite}", description=module.__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    module.add_arguments(parser)
    opts = parser.parse_args(args.options)
    result = module.run(opts)
    if opts.json:
        print(json.dumps(result, sort_keys=True))
    return 0
